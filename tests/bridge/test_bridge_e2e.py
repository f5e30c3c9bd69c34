"""The bridge as people run it (`python -m bridge` subprocesses) against the real
Mosquitto, Kafka and MongoDB-wire server. Each test has its own MQTT topic root
(routes under `t/<unique>/`), Kafka topics, consumer groups and database."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer
from pymongo import MongoClient

from contracts.clients import kafka_consumer, mqtt_client, mqtt_connect
from contracts.settings import Settings
from tests.support import ServiceProcess, free_port, wait_for

pytestmark = pytest.mark.services


class Bridge(ServiceProcess):
    """One `python -m bridge` process with this test's settings."""

    def __init__(self, settings: Settings, unique: str, log_dir: Path, *, instance: int = 0,
                 command: str = "run", **env: str) -> None:
        http_port = free_port()
        super().__init__("bridge", {
            **os.environ,
            "BRIDGE_TOPIC_PREFIX": f"t/{unique}/",
            "KAFKA_TOPIC_READINGS": settings.kafka_topic_readings,
            "KAFKA_TOPIC_DLQ": settings.kafka_topic_dlq,
            "MONGO_DB": settings.mongo_db,
            "BRIDGE_SHARE_GROUP": settings.bridge_share_group,
            "BRIDGE_SINK_GROUP": settings.bridge_sink_group,
            "BRIDGE_CLIENT_ID": f"bridge-{unique}-{instance}",
            "BRIDGE_HTTP_PORT": str(http_port),
            "BRIDGE_SESSION_EXPIRY_S": "120",
            "BRIDGE_SHUTDOWN_TIMEOUT_S": "5",
            "BRIDGE_SINK_BATCH_WAIT_MS": "50",
            "LOG_FORMAT": "json",
            **env,
        }, log_dir / f"bridge-{instance}-{time.monotonic_ns()}.log", args=(command,),
            http_port=http_port)

    def ready(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/ready")
        return status, body or {}

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                    timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def wait_subscribed(self, timeout: float = 25.0) -> None:
        wait_for(lambda: self.ready()[1].get("forwarder", {}).get("mqtt_subscribed"), timeout,
                 f"bridge subscribed ({self.logs()[-800:]})")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, msg: str) -> list[dict[str, Any]]:
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                event = orjson.loads(line)
                if event.get("msg") == msg:
                    events.append(event)
        return events


@pytest.fixture
def bridges(services: Settings, unique: str, tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    started: list[Bridge] = []

    def start(**kwargs: Any) -> Bridge:
        bridge = Bridge(services, unique, tmp_path, **kwargs).start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.kill()


class Publisher:
    def __init__(self, settings: Settings, unique: str) -> None:
        self.root = f"t/{unique}/"
        self.client = mqtt_client(settings)
        mqtt_connect(self.client, settings)
        self.client.loop_start()

    def publish(self, items: list[tuple[str, bytes]], timeout: float = 20.0) -> None:
        infos = [self.client.publish(self.root + topic, payload, qos=1)
                 for topic, payload in items]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not take a QoS 1 publish in time"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mqtt_ready: Settings, unique: str) -> Iterator[Publisher]:
    pub = Publisher(mqtt_ready, unique)
    yield pub
    pub.close()


def reading(device: str, sensor: str, index: int, base_s: float | None = None) -> bytes:
    ts = (base_s or time.time()) + index / 1000
    return orjson.dumps({"ts": ts, "value": float(index), "unit": "C", "seq": index})


def good_readings(count: int, device: str = "dev1") -> list[tuple[str, bytes]]:
    base = time.time()
    return [(f"sensors/{device}/temp", reading(device, "temp", i, base)) for i in range(count)]


def consume_all(settings: Settings, topic: str, expected: int,
                timeout: float = 20.0) -> list[Any]:
    consumer: Consumer = kafka_consumer(settings, f"check-{time.monotonic_ns()}")
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(records) < expected:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    records.append(msg)
        # A moment more to catch records beyond the expected count (duplicates).
        records.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    finally:
        consumer.close()
    return records


def wait_count(mongo: MongoClient[dict[str, Any]], settings: Settings, collection: str,
               expected: int, timeout: float = 25.0) -> int:
    coll = mongo[settings.mongo_db][collection]
    wait_for(lambda: coll.count_documents({}) >= expected, timeout,
             f"{expected} documents in {collection} (have {coll.count_documents({})})")
    time.sleep(0.5)  # would a duplicate still arrive?
    return coll.count_documents({})


def test_a_reading_lands_once_in_kafka_and_mongo(bridges: Any, publisher: Publisher,
                                                 services: Settings, mongo: Any) -> None:
    bridge = bridges()
    bridge.wait_ready()
    now = time.time()
    payload = orjson.dumps({"ts": now, "value": 21.5, "unit": "C", "seq": 1})
    publisher.publish([("sensors/kitchen/temp", payload)])

    assert wait_count(mongo, services, "readings", 1) == 1
    doc = mongo[services.mongo_db]["readings"].find_one()
    assert (doc["device_id"], doc["sensor"], doc["value"], doc["unit"], doc["seq"]) == (
        "kitchen", "temp", 21.5, "C", 1)
    assert abs(doc["ts"].timestamp() - now) < 0.002
    assert doc["source"]["topic"] == publisher.root + "sensors/kitchen/temp"

    records = consume_all(services, services.kafka_topic_readings, 1)
    assert len(records) == 1
    assert records[0].key() == b"kitchen"
    headers = dict(records[0].headers())
    assert headers["mqtt_topic"] == (publisher.root + "sensors/kitchen/temp").encode()
    assert headers["mqtt_qos"] == b"1" and headers["codec"] == b"json_reading"
    assert orjson.loads(records[0].value())["event_id"] == doc["_id"]
    assert bridge.metric("bridge_messages_acked_total") == 1
    assert bridge.terminate() == 0


BAD_INPUTS: list[tuple[str, str, bytes]] = [
    ("not_json", "sensors/dev1/temp", b"hello"),
    ("not_utf8", "sensors/dev1/temp", b'{"ts": 1, "value": "\xff\xfe"}'),
    ("wrong_type", "sensors/dev1/temp", b'{"ts": 1763788000, "value": "hot"}'),
    ("not_finite", "sensors/dev1/temp", b'{"ts": 1763788000, "value": NaN}'),
    ("not_finite", "sensors/dev1/humidity", b'{"ts": 1763788000, "value": 1e999}'),
    ("missing_field", "sensors/dev1/temp", b'{"ts": 1763788000}'),
    ("too_large", "sensors/dev1/temp", b'{"value": 1, "pad": "' + b"x" * 300_000 + b'"}'),
    ("no_route", "sensors/dev1", b'{"ts": 1763788000, "value": 1}'),
    ("ts_out_of_range", "sensors/dev1/temp", b'{"ts": "1900-01-01T00:00:00Z", "value": 1}'),
    ("ts_out_of_range", "sensors/dev1/pressure", b'{"ts": 99999999999999, "value": 1}'),
]


def test_bad_input_is_dead_lettered_in_both_places_and_good_input_arrives_whole(
        bridges: Any, publisher: Publisher, services: Settings, mongo: Any) -> None:
    bridge = bridges()
    bridge.wait_ready()
    good = good_readings(60)
    stream: list[tuple[str, bytes]] = []
    for index, item in enumerate(good):
        stream.append(item)
        if index % 6 == 5:
            _, topic, payload = BAD_INPUTS[index // 6]
            stream.append((topic, payload))
    publisher.publish(stream)

    assert wait_count(mongo, services, "readings", len(good)) == len(good)
    assert wait_count(mongo, services, "dead_letters", len(BAD_INPUTS)) == len(BAD_INPUTS)
    stored = {d["seq"] for d in mongo[services.mongo_db]["readings"].find()}
    assert stored == set(range(len(good)))
    letters = list(mongo[services.mongo_db]["dead_letters"].find())
    assert sorted(d["reason"] for d in letters) == sorted(r for r, _, _ in BAD_INPUTS)
    for letter in letters:
        assert letter["topic"].startswith(publisher.root) and letter["message"]
        assert letter["payload_size"] > 0 and letter["payload_b64"]

    dlq = consume_all(services, services.kafka_topic_dlq, len(BAD_INPUTS))
    assert sorted(orjson.loads(m.value())["reason"] for m in dlq) == sorted(
        r for r, _, _ in BAD_INPUTS)
    assert bridge.metric('bridge_messages_acked_total') == len(stream)
    assert bridge.terminate() == 0


def test_the_same_readings_published_twice_give_one_document_each(
        bridges: Any, publisher: Publisher, services: Settings, mongo: Any) -> None:
    bridge = bridges()
    bridge.wait_ready()
    batch = good_readings(50)
    publisher.publish(batch)
    publisher.publish(batch)
    assert wait_count(mongo, services, "readings", 50) == 50
    wait_for(lambda: bridge.ready()[1]["sink"]["duplicates"] >= 50, 20, "duplicates counted")
    assert bridge.ready()[1]["sink"]["duplicates"] == 50
    assert mongo[services.mongo_db]["readings"].count_documents({}) == 50
    assert bridge.terminate() == 0


def test_two_bridges_share_the_load_and_store_every_reading_once(
        bridges: Any, publisher: Publisher, services: Settings, mongo: Any) -> None:
    first = bridges(instance=0, BRIDGE_SHARED_SUBSCRIPTION="true")
    second = bridges(instance=1, BRIDGE_SHARED_SUBSCRIPTION="true")
    first.wait_ready()
    second.wait_ready()
    batch = good_readings(300, "a") + good_readings(300, "b")
    publisher.publish(batch)
    assert wait_count(mongo, services, "readings", len(batch)) == len(batch)
    received = [b.metric("bridge_messages_received_total") for b in (first, second)]
    assert sum(received) == len(batch)
    assert min(received) > 0, f"one bridge took everything: {received}"
    assert len(consume_all(services, services.kafka_topic_readings, len(batch))) == len(batch)
    assert first.terminate() == 0 and second.terminate() == 0


def test_acks_are_held_while_kafka_is_unreachable_and_nothing_is_lost(
        bridges: Any, publisher: Publisher, services: Settings, mongo: Any) -> None:
    stranded = bridges(command="forward", KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
                       BRIDGE_KAFKA_STALL_S="2")
    stranded.wait_subscribed()
    batch = good_readings(40)
    publisher.publish(batch)
    wait_for(lambda: stranded.ready()[1].get("forwarder", {}).get("in_flight") == len(batch),
             20, "all messages in flight")
    status, details = stranded.ready()
    assert status == 503 and details["forwarder"]["kafka_reachable"] is False
    assert stranded.metric("bridge_messages_acked_total") == 0
    assert stranded.terminate() == 0
    summary = stranded.log_events("forwarder stopped")[0]
    assert summary["acked"] == 0 and summary["unacked_in_flight"] == len(batch)

    # Same client id, same persistent session: the broker sends the unacked messages again.
    healthy = bridges(instance=0)
    healthy.wait_ready()
    assert wait_count(mongo, services, "readings", len(batch)) == len(batch)
    assert {d["seq"] for d in mongo[services.mongo_db]["readings"].find()} == set(range(40))
    assert healthy.terminate() == 0


def test_sigterm_writes_everything_acked_and_a_restart_delivers_the_rest(
        bridges: Any, publisher: Publisher, services: Settings, mongo: Any) -> None:
    bridge = bridges()
    bridge.wait_ready()
    batch = good_readings(2000)
    publisher.publish(batch[:250])
    wait_for(lambda: bridge.metric("bridge_messages_received_total") > 0, 20, "first messages")
    bridge.proc.send_signal(signal.SIGTERM)  # while the stream is still arriving
    publisher.publish(batch[250:])
    assert bridge.terminate() == 0
    summary = bridge.log_events("forwarder stopped")[0]
    assert 0 < summary["received"] < len(batch)
    assert summary["unacked_in_flight"] == 0
    assert summary["acked"] == summary["forwarded"] == summary["received"]
    assert bridge.log_events("sink stopped"), "the sink did not finish"
    # Everything acked is in Kafka and, after the sink's last batch, in MongoDB.
    readings = mongo[services.mongo_db]["readings"]
    assert readings.count_documents({}) == summary["acked"]
    in_kafka = consume_all(services, services.kafka_topic_readings, summary["acked"])
    assert len(in_kafka) == summary["acked"]

    restarted = bridges()  # same client id: resumes the session the broker kept
    restarted.wait_ready()
    assert wait_count(mongo, services, "readings", len(batch), timeout=40) == len(batch)
    assert restarted.terminate() == 0
