"""Client factories: every service opens its connections here, in `__main__`
or the FastAPI lifespan, and passes them in. Settings decide the addresses;
the delivery rule (DESIGN.md) decides the safety options, which callers may
extend but should not weaken."""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo import AsyncMongoClient, MongoClient

from contracts.errors import ConfigError, EdgepipeError, ServiceUnavailable
from contracts.settings import Settings

# acks=all + idempotence: a reading is only "in Kafka" once every in-sync
# replica has it, and producer retries never write it twice.
SAFE_PRODUCER = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
    "message.timeout.ms": 300_000,
}

# Offsets move only when the consumer says its writes are done.
SAFE_CONSUMER = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
    "isolation.level": "read_committed",
}


# Every client: never "re-bootstrap". librdkafka (2.10 on) does so by default
# whenever all known brokers are down, which with one broker is every outage:
# it decommissions the learned broker handle, about 20 times a second while
# the broker is away, and a group or transaction coordinator can stay tied to
# a decommissioned handle after the broker returns (librdkafka issues 5456,
# 5511): send_offsets_to_transaction then hangs (every time in
# tests/faults/test_kafka_restart_clients.py). Our bootstrap.servers never go
# stale, so re-bootstrapping buys nothing; with "none" the broker handle just
# reconnects when the broker is back.
RECOVERY = {"metadata.recovery.strategy": "none"}


T = TypeVar("T")


class KafkaCallHung(EdgepipeError):
    """A librdkafka call outlived its timeout: its client is replaced."""


def call_within(what: str, action: Callable[[], T], timeout_s: float) -> T:
    """`action()` on a daemon thread, waited for at most `timeout_s`: its value,
    or the exception it raised, or KafkaCallHung when it has not returned.
    librdkafka 2.x can lose its group or transaction coordinator for good
    after the broker restarts (issues 5456, 5511), and the calls to it then
    never return. Daemon, not an executor's worker: a thread stuck in
    librdkafka must not hold up the interpreter's exit."""
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, action()))
        except BaseException as exc:  # handed to the caller below
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=f"kafka-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise KafkaCallHung(f"{what} did not return within {timeout_s:.0f} s (librdkafka hang)")
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _debug(settings: Settings) -> dict[str, str]:
    """librdkafka's debug contexts when KAFKA_DEBUG is set (diagnosing only)."""
    return {"debug": settings.kafka_debug} if settings.kafka_debug else {}


def kafka_producer(settings: Settings, **overrides: Any) -> Producer:
    conf = {"bootstrap.servers": settings.kafka_bootstrap, **SAFE_PRODUCER, **RECOVERY,
            **_debug(settings), **overrides}
    return Producer(conf)


def kafka_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    conf = {"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id,
            **SAFE_CONSUMER, **RECOVERY, **_debug(settings), **overrides}
    return Consumer(conf)


def kafka_admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **RECOVERY})


def ensure_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Create topics that do not exist yet, with the configured partition count."""
    admin = kafka_admin(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except Exception as exc:
        raise ServiceUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    missing = [NewTopic(n, num_partitions=settings.kafka_partitions, replication_factor=1)
               for n in names if n not in existing]
    if not missing:
        return
    _await_topics(admin.create_topics(missing, operation_timeout=timeout), timeout,
                  "create", already="TOPIC_ALREADY_EXISTS")


def delete_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    """Delete topics and wait for it: an unawaited request dies with its admin
    client, and every topic left behind slows the next Kafka start."""
    admin = kafka_admin(settings)
    _await_topics(admin.delete_topics(names, operation_timeout=timeout), timeout,
                  "delete", already="UNKNOWN_TOPIC_OR_PART")


def _await_topics(futures: dict[str, Any], timeout: float, verb: str, already: str) -> None:
    """Wait for an admin request per topic; the error `already` means the topic
    is already as asked (created, or gone) and counts as done."""
    for name, future in futures.items():
        try:
            future.result(timeout)
        except Exception as exc:
            if already not in str(exc):
                raise ServiceUnavailable(f"cannot {verb} Kafka topic {name}: {exc}") from exc


# A dead MongoDB should surface as an error within seconds, not pymongo's 30 s.
MONGO_DEFAULTS = {"tz_aware": True, "serverSelectionTimeoutMS": 5000}


def mongo_client(settings: Settings, **overrides: Any) -> MongoClient[dict[str, Any]]:
    return MongoClient(settings.mongo_url.get_secret_value(), **{**MONGO_DEFAULTS, **overrides})


def async_mongo_client(settings: Settings,
                       **overrides: Any) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(settings.mongo_url.get_secret_value(),
                            **{**MONGO_DEFAULTS, **overrides})


def mqtt_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for the broker when MQTT_TLS is on (None otherwise):
    certificate and host name verified, against MQTT_CA_FILE if set (the local
    CA generated at set-up) or the system's CAs."""
    if not settings.mqtt_tls:
        return None
    try:
        return ssl.create_default_context(
            cafile=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MQTT_CA_FILE {settings.mqtt_ca_file}: {exc}") from exc


def mqtt_client(settings: Settings, client_id: str | None = None, *,
                persistent: bool = False, manual_ack: bool = False,
                session_expiry_s: int = 86_400,
                client_class: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    """An MQTT 5 client with credentials set. `persistent` keeps the session
    (and its queued QoS 1 messages) on the broker across disconnects;
    `client_class` is paho's Client or a subclass (the bridge's lean receiver)."""
    client = client_class(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"edgepipe-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.username_pw_set(settings.mqtt_username, settings.mqtt_password.get_secret_value())
    tls = mqtt_tls_context(settings)
    if tls is not None:
        client.tls_set_context(tls)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.user_data_set({"persistent": persistent, "session_expiry_s": session_expiry_s})
    return client


def mqtt_connect(client: mqtt.Client, settings: Settings, *,
                 receive_maximum: int | None = None) -> None:
    """Connect with the session options `mqtt_client` recorded; non-blocking
    callers then run `loop_start()`. `receive_maximum` lets the broker keep that
    many unacknowledged QoS 1 messages in flight to us (MQTT 5), which a client
    that acks late, after Kafka, needs to keep throughput up."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    opts = client.user_data_get() or {}
    props = Properties(PacketTypes.CONNECT)
    persistent = bool(opts.get("persistent"))
    if persistent:
        props.SessionExpiryInterval = int(opts.get("session_expiry_s", 86_400))
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    try:
        client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=settings.mqtt_keepalive,
                       clean_start=not persistent, properties=props)
    except OSError as exc:
        raise ServiceUnavailable(
            f"MQTT broker at {settings.mqtt_host}:{settings.mqtt_port}: {exc}") from exc
