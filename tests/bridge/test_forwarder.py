"""The forwarder's ack bookkeeping, driven directly: a fake MQTT client records
PUBACKs and a fake producer holds deliveries until the test releases them.
(The same paths run against the real services in test_bridge_e2e.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import KafkaError, Message
from prometheus_client import Histogram

from bridge import metrics
from bridge.forwarder import Forwarder
from bridge.kafka_health import KafkaHealth
from bridge.metrics import observe_many
from bridge.routes import load_routes
from bridge.subscriptions import subscription_filters
from contracts.settings import Settings, get_settings

PREFIX = "t/unit/"


class FakeClient:
    """Stands in for paho: records acks, ignores callbacks wiring."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))


class FakeProducer:
    """Keeps each produced record with its delivery callback until `deliver`."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None, Any, Callable[..., None]]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, *,
                headers: Any = None, on_delivery: Callable[..., None]) -> None:
        self.records.append((topic, value, key, headers, on_delivery))

    def deliver(self, index: int, error: KafkaError | None = None) -> None:
        topic, value, key, headers, callback = self.records[index]
        callback(error, Message(topic=topic, value=value, key=key, headers=headers))


@pytest.fixture
def parts() -> tuple[Forwarder, FakeClient, FakeProducer, Settings]:
    settings = get_settings().model_copy(update={"kafka_topic_dlq": "dlq"})
    routes = load_routes(settings, topic_prefix=PREFIX)
    client, producer = FakeClient(), FakeProducer()
    forwarder = Forwarder(settings, routes, client, producer, KafkaHealth(),  # type: ignore[arg-type]
                          (PREFIX + "sensors/#",))
    return forwarder, client, producer, settings


def message(topic: str, payload: bytes, mid: int, qos: int = 1) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload, msg.qos = payload, qos
    return msg


def sensor_logger_batch(entries: int) -> bytes:
    now_ns = time.time_ns()
    return orjson.dumps({"messageId": 7, "sessionId": "s", "deviceId": "phone1", "payload": [
        {"name": "accelerometer", "time": now_ns + i, "values": {"x": 1.0, "y": 2.0, "z": i}}
        for i in range(entries)]})


def test_subscriptions_drop_filters_a_catch_all_covers() -> None:
    filters = subscription_filters(["a/sensors/+/+", "a/sensor-logger", "a/Image"],
                                   ("a/sensors/#",))
    assert filters == ["a/sensor-logger", "a/Image", "a/sensors/#"]
    assert subscription_filters(["x/+/y", "x/a/y", "x/a"]) == ["x/+/y", "x/a"]
    assert subscription_filters(["x/#", "x"]) == ["x/#"]


def test_batch_is_acked_once_after_its_last_delivery(parts: Any) -> None:
    forwarder, client, producer, _ = parts
    forwarder._on_message(client, None, message(PREFIX + "sensor-logger",
                                                sensor_logger_batch(5), mid=11))
    assert len(producer.records) == 5
    assert all(topic == forwarder.settings.kafka_topic_readings
               for topic, *_ in producer.records)
    for index in range(4):
        producer.deliver(index)
    assert client.acks == [], "acked before Kafka had every reading of the message"
    assert forwarder.in_flight == 1
    producer.deliver(4)
    assert client.acks == [(11, 1)]
    assert forwarder.in_flight == 0


def test_failed_delivery_is_produced_again_and_not_acked(parts: Any) -> None:
    forwarder, client, producer, _ = parts
    payload = orjson.dumps({"ts": time.time(), "value": 1.5})
    forwarder._on_message(client, None, message(PREFIX + "sensors/d1/temp", payload, mid=3))
    producer.deliver(0, KafkaError(KafkaError._MSG_TIMED_OUT))
    assert client.acks == []
    forwarder._retries[0] = (0.0, *forwarder._retries[0][1:])  # due now instead of in 1 s
    forwarder._produce_due_retries()
    assert len(producer.records) == 2
    assert orjson.loads(producer.records[1][1])["value"] == 1.5
    producer.deliver(1)
    assert client.acks == [(3, 1)]


def test_empty_test_push_is_acked_at_once(parts: Any) -> None:
    forwarder, client, producer, _ = parts
    push = orjson.dumps({"messageId": 0, "sessionId": "s", "deviceId": "p", "payload": []})
    forwarder._on_message(client, None, message(PREFIX + "sensor-logger", push, mid=5))
    assert producer.records == []
    assert client.acks == [(5, 1)]


def test_bad_input_goes_to_the_dlq_and_is_acked_after_kafka(parts: Any) -> None:
    forwarder, client, producer, _ = parts
    forwarder._on_message(client, None, message(PREFIX + "sensors/d1", b"{}", mid=8))
    forwarder._on_message(client, None, message(PREFIX + "sensors/d1/t", b"\xff", mid=9))
    letters = [orjson.loads(value) for _, value, *_ in producer.records]
    assert [topic for topic, *_ in producer.records] == ["dlq", "dlq"]
    assert [(d["reason"], d["route"]) for d in letters] == [("no_route", None),
                                                            ("not_utf8", "sensors")]
    assert client.acks == []
    producer.deliver(0)
    producer.deliver(1)
    assert client.acks == [(8, 1), (9, 1)]


def test_headers_carry_the_mqtt_metadata(parts: Any) -> None:
    forwarder, client, producer, _ = parts
    msg = message(PREFIX + "sensors/d1/temp", orjson.dumps({"ts": time.time(), "value": 2}), 4)
    msg.retain = True
    forwarder._on_message(client, None, msg)
    _, _, key, headers, _ = producer.records[0]
    assert key == b"d1"
    as_dict = dict(headers)
    assert as_dict["mqtt_topic"] == (PREFIX + "sensors/d1/temp").encode()
    assert (as_dict["mqtt_qos"], as_dict["mqtt_retain"]) == (b"1", b"1")
    assert (as_dict["route"], as_dict["codec"]) == (b"sensors", b"json_reading")
    assert int(as_dict["received_at_ns"]) > 0


def test_messages_after_stop_are_left_for_redelivery(parts: Any) -> None:
    forwarder, client, producer, _ = parts
    forwarder.accepting = False
    forwarder._on_message(client, None, message(PREFIX + "sensors/d1/t", b"{}", mid=1))
    assert producer.records == [] and client.acks == []


class BatchingClient(FakeClient):
    """Like bridge.mqtt_fast.FastAckClient: PUBACKs go out in batches."""

    def __init__(self) -> None:
        super().__init__()
        self.on_publish_received: Any = None
        self.batches: list[list[int]] = []

    def ack_many(self, mids: Any) -> None:
        self.batches.append(list(mids))


def test_acks_of_one_poll_go_out_as_one_batch_after_kafka() -> None:
    settings = get_settings().model_copy(update={"kafka_topic_dlq": "dlq"})
    client, producer = BatchingClient(), FakeProducer()
    routes = load_routes(settings, topic_prefix=PREFIX)
    forwarder = Forwarder(settings, routes, client, producer,  # type: ignore[arg-type]
                          KafkaHealth(), (PREFIX + "sensors/#",))
    assert client.on_publish_received == forwarder._forward, "lean path not wired"
    payload = orjson.dumps({"ts": time.time(), "value": 1.0})
    for mid in (21, 22, 23):
        client.on_publish_received(PREFIX + "sensors/d1/t", payload, 1, mid, False)
    client.on_publish_received(PREFIX + "sensor-logger", sensor_logger_batch(2), 1, 24, False)
    for index in range(3):
        producer.deliver(index)
    producer.deliver(3)  # the first of the batch's two readings
    assert client.batches == [] and client.acks == [], "acked before the poll ended"
    forwarder._send_acks()
    assert client.batches == [[21, 22, 23]]
    producer.deliver(4)
    forwarder._send_acks()
    forwarder._send_acks()  # nothing new: no empty batch
    assert client.batches == [[21, 22, 23], [24]]
    assert client.acks == [] and forwarder.in_flight == 0


def _histogram_samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value
            for metric in histogram.collect() for s in metric.samples
            if not s.name.endswith("_created")}


def test_observe_many_matches_observe_one_by_one() -> None:
    buckets = (0.001, 0.01, 0.1, 1, 10)
    one, many = (Histogram(f"t_{name}", "t", buckets=buckets, registry=None)
                 for name in ("one", "many"))
    now_ns = time.time_ns()
    # On the bounds, between them, past the last, and negative (a clock step).
    received = [now_ns - int(s * 1e9) for s in (0.001, 0.0005, 0.05, 0.1, 3.0, 99.0, -0.5)]
    for r in received:
        one.observe((now_ns - r) / 1e9)
    observe_many(many, now_ns, received)
    expected = {(name.replace("t_one", "t_many"), le): value
                for (name, le), value in _histogram_samples(one).items()}
    assert _histogram_samples(many) == pytest.approx(expected)


def test_after_poll_reports_health_latency_and_acks_once_per_poll() -> None:
    settings = get_settings().model_copy(update={"kafka_topic_dlq": "dlq"})
    client, producer, health = BatchingClient(), FakeProducer(), KafkaHealth()
    routes = load_routes(settings, topic_prefix=PREFIX)
    forwarder = Forwarder(settings, routes, client, producer,  # type: ignore[arg-type]
                          health, (PREFIX + "sensors/#",))
    health.down_since = time.monotonic()  # as after an outage
    before = _histogram_samples(metrics.KAFKA_ACK_LATENCY)[("bridge_kafka_ack_seconds_count", "")]
    payload = orjson.dumps({"ts": time.time(), "value": 1.0})
    for mid in (31, 32):
        client.on_publish_received(PREFIX + "sensors/d1/t", payload, 1, mid, False)
    producer.deliver(0)
    producer.deliver(1)
    assert health.down_since is not None and client.batches == [], "reported before the poll ended"
    forwarder._after_poll()
    assert health.down_since is None, "a delivery did not mark Kafka reachable"
    assert client.batches == [[31, 32]]
    after = _histogram_samples(metrics.KAFKA_ACK_LATENCY)[("bridge_kafka_ack_seconds_count", "")]
    assert after - before == 2
