"""Shared fixtures: the suite talks to the real local services that
`local_stack/stack.sh up` starts (or whatever MQTT_HOST, KAFKA_BOOTSTRAP and
MONGO_URL point at). Each test gets its own Kafka topics, MQTT topic root and
MongoDB database, so tests never see each other's data.

If a service is down, tests that need it fail with a message saying so: a
skipped service test would hide a broken stack.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from contracts.clients import delete_topics, ensure_topics, mongo_client
from contracts.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if not _reachable(host, port):
        pytest.fail(f"{name} is not reachable at {host}:{port}; start the local services "
                    "with `bash local_stack/stack.sh up` (make test does this)", pytrace=False)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def unique() -> str:
    """A short id unique to this test, for topics, databases and client ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(base_settings: Settings, unique: str) -> Settings:
    """Settings whose Kafka topics and MongoDB database belong to this test only."""
    return base_settings.model_copy(update={
        "edgepipe_env": "test",
        "kafka_partitions": 3,
        "kafka_topic_readings": f"t.{unique}.readings",
        "kafka_topic_dlq": f"t.{unique}.readings.dlq",
        "kafka_topic_analytics": f"t.{unique}.analytics",
        "kafka_topic_windows": f"t.{unique}.readings.windows",
        "mongo_db": f"test_{unique}",
        "bridge_share_group": f"bridge-{unique}",
        "bridge_sink_group": f"raw-sink-{unique}",
        "worker_group": f"model-worker-{unique}",
    })


@pytest.fixture
def mqtt_ready(settings: Settings) -> Settings:
    require_service("Mosquitto", settings.mqtt_host, settings.mqtt_port)
    return settings


@pytest.fixture
def kafka_topics(settings: Settings) -> Iterator[Settings]:
    """Creates this test's four Kafka topics and deletes them afterwards."""
    host, port = settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
    require_service("Kafka", host, int(port))
    names = [settings.kafka_topic_readings, settings.kafka_topic_dlq,
             settings.kafka_topic_analytics, settings.kafka_topic_windows]
    ensure_topics(settings, names)
    yield settings
    delete_topics(settings, names)


@pytest.fixture
def mongo(settings: Settings) -> Iterator[MongoClient[dict[str, Any]]]:
    """A client whose test database is dropped afterwards."""
    client = mongo_client(settings)
    try:
        client.admin.command("ping")
    except Exception as exc:
        pytest.fail(f"MongoDB-wire server not reachable at {settings.mongo_url}: {exc}; "
                    "start it with `bash local_stack/stack.sh up`", pytrace=False)
    yield client
    client.drop_database(settings.mongo_db)
    client.close()


@pytest.fixture
def services(mqtt_ready: Settings, kafka_topics: Settings,
             mongo: MongoClient[dict[str, Any]]) -> Settings:
    """All three real services up, with this test's topics and database."""
    return kafka_topics


_SERVICE_FIXTURES = frozenset({"services", "mqtt_ready", "kafka_topics", "mongo"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real-service fixture, so `-m "not services"`
    selects the pure ones."""
    for item in items:
        if _SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
