"""Fuzz of the bridge's whole forward step (route match, decode, dead-letter
construction, ack bookkeeping), not only the codecs: any topic under the
bridge's root and any bytes give either canonical readings for Kafka or one
dead letter that keeps the exact bytes and a known reason, and the message
is acknowledged exactly once after delivery. Never an exception. The MQTT
client and Kafka producer are fakes; the real ones are exercised by
test_hostile_corpus.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import Message
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bridge.codecs import DECODE_REASONS
from bridge.forwarder import Forwarder
from bridge.kafka_health import KafkaHealth
from bridge.routes import load_routes
from contracts.dead_letters import DeadLetter
from contracts.events import Reading
from contracts.settings import get_settings

PREFIX = "t/fuzz/"
EXAMPLES = hypothesis_settings(max_examples=200, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])


class RecordingClient:
    def __init__(self) -> None:
        self.acks: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)


class ImmediateProducer:
    """Keeps produced records; `deliver_all` reports every one as written."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, Callable[..., None]]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, *,
                headers: Any = None, on_delivery: Callable[..., None]) -> None:
        self.records.append((topic, value, on_delivery))

    def deliver_all(self) -> None:
        for topic, value, callback in self.records:
            callback(None, Message(topic=topic, value=value))


level = st.sampled_from(["sensors", "sensor-logger", "Image", "dev-1", "temp", "", "+", "#",
                         "ünï", "a" * 70]) | st.text(max_size=12)
topics = st.lists(level, min_size=1, max_size=4).map(lambda parts: PREFIX + "/".join(parts))
known_topics = st.sampled_from([PREFIX + "sensors/dev-1/temp", PREFIX + "sensor-logger",
                                PREFIX + "Image", PREFIX + "sensors/dev-1"])
now_ns = time.time_ns()
near_valid = st.sampled_from([
    json.dumps({"ts": now_ns, "value": 1.5}).encode(),
    json.dumps({"sensorId": "s1", "image": "7", "collectedAt": "2026-01-01 00:00:00"}).encode(),
    json.dumps({"messageId": 1, "sessionId": "s", "deviceId": "d", "payload": [
        {"name": "light", "time": now_ns, "values": {"lux": 3}}]}).encode(),
])
payloads = st.binary(max_size=400) | near_valid | near_valid.flatmap(
    lambda good: st.integers(0, len(good) - 1).map(lambda cut: good[:cut]))


def forward(topic: str, payload: bytes) -> tuple[RecordingClient, ImmediateProducer]:
    settings = get_settings().model_copy(update={"kafka_topic_dlq": "dlq",
                                                 "kafka_topic_readings": "readings"})
    routes = load_routes(settings, topic_prefix=PREFIX)
    client, producer = RecordingClient(), ImmediateProducer()
    forwarder = Forwarder(settings, routes, client, producer,  # type: ignore[arg-type]
                          KafkaHealth(), (PREFIX + "sensors/#",))
    msg = mqtt.MQTTMessage(mid=42, topic=topic.encode())
    msg.payload, msg.qos = payload, 1
    forwarder._on_message(client, None, msg)  # type: ignore[arg-type]
    producer.deliver_all()
    return client, producer


def check(topic: str, payload: bytes) -> None:
    client, producer = forward(topic, payload)
    assert client.acks == [42], "acknowledged exactly once, after every delivery"
    kafka_topics = {t for t, _, _ in producer.records}
    assert kafka_topics <= {"readings"} or kafka_topics == {"dlq"}
    if kafka_topics == {"dlq"}:
        (_, value, _), = producer.records
        letter = DeadLetter.from_json(value)
        assert letter.reason in DECODE_REASONS | {"no_route", "codec_error"}
        assert letter.reason != "codec_error", letter.message
        assert letter.payload == payload and letter.topic == topic
    else:
        for _, value, _ in producer.records:
            reading = Reading.from_json(value)
            assert reading.value is not None or reading.values


@EXAMPLES
@given(topics, payloads)
def test_any_topic_and_bytes(topic: str, payload: bytes) -> None:
    check(topic, payload)


@EXAMPLES
@given(known_topics, payloads)
def test_routed_topics_with_any_bytes(topic: str, payload: bytes) -> None:
    check(topic, payload)
