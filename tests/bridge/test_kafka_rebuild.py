"""The forwarder's stall guard on the real Kafka: a producer that holds its
records although the broker answers (here: a real librdkafka producer whose
linger is almost 5 minutes, standing in for one wedged after a broker restart) is
replaced, and everything it held is delivered by the new producer, in order,
each MQTT message acknowledged once and only after Kafka has its record."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from bridge.forwarder import PRODUCER_TUNING, Forwarder
from bridge.kafka_health import KafkaHealth
from bridge.kafka_rebuild import StallGuard
from bridge.routes import load_routes
from contracts.clients import kafka_consumer, kafka_producer
from contracts.settings import Settings
from tests.bridge.test_forwarder import FakeClient
from tests.support import wait_for

pytestmark = pytest.mark.services

PREFIX = "t/rebuild/"
REBUILD_S = 3.0


def _forward(forwarder: Forwarder, device: str, seq: int, mid: int) -> None:
    payload = orjson.dumps({"ts": time.time(), "value": float(seq), "seq": seq})
    forwarder._forward(f"{PREFIX}sensors/{device}/temp", payload, 1, mid, False)


def _stored(settings: Settings, unique: str, expected: int) -> list[tuple[int, str, int]]:
    """(partition, device, seq) of every record in the readings topic, in offset order."""
    consumer = kafka_consumer(settings, f"check-{unique}")
    topic = settings.kafka_topic_readings
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.kafka_partitions)])
    found: list[tuple[int, int, str, int]] = []
    deadline = time.monotonic() + 30
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(100, 1.0):
                if msg.error() is None:
                    doc = orjson.loads(msg.value() or b"{}")
                    found.append((msg.partition() or 0, msg.offset() or 0, doc["device_id"],
                                  doc["seq"]))
    finally:
        consumer.close()
    return [(p, d, s) for p, _, d, s in sorted(found)]


def test_a_stalled_producer_is_replaced_and_its_records_delivered_in_order(
        kafka_topics: Settings, unique: str) -> None:
    settings = kafka_topics
    health = KafkaHealth()
    stalled = kafka_producer(settings, error_cb=health.on_error,
                             **{**PRODUCER_TUNING, "linger.ms": 290_000})

    def make_producer() -> Any:
        return kafka_producer(settings, error_cb=health.on_error, **PRODUCER_TUNING)

    guard = StallGuard(make_producer, REBUILD_S)
    client = FakeClient()
    forwarder = Forwarder(settings, load_routes(settings, topic_prefix=PREFIX), client,  # type: ignore[arg-type]
                          stalled, health, stall_guard=guard)
    devices, per_device = ("dev-a", "dev-b", "dev-c"), 40
    mid = 0
    for seq in range(per_device):
        for device in devices:
            mid += 1
            _forward(forwarder, device, seq, mid)
    total = mid
    started = time.monotonic()
    forwarder._kafka_thread.start()
    try:
        time.sleep(1.0)
        assert client.acks == [], "acknowledged before Kafka had the records"
        assert stalled.list_topics(timeout=5).topics, "the broker must answer metadata"
        wait_for(lambda: len(client.acks) == total, 30, "every message acknowledged")
        replaced_after = time.monotonic() - started
        # More arrives after the swap: it goes straight to the new producer.
        for device in devices:
            mid += 1
            _forward(forwarder, device, per_device, mid)
        wait_for(lambda: len(client.acks) == mid, 30, "the later messages acknowledged")
    finally:
        forwarder.stopping.set()
        forwarder._kafka_thread.join(10)
    assert guard.rebuilds == 1
    assert replaced_after >= REBUILD_S, replaced_after
    assert sorted(m for m, _ in client.acks) == list(range(1, mid + 1)), "each acked once"
    assert forwarder.in_flight == 0 and forwarder.producer is not stalled
    stored = _stored(settings, unique, mid)
    for device in devices:
        seqs = [s for _, d, s in stored if d == device]
        # In order and complete (the stalled producer had sent nothing, so no duplicates).
        assert seqs == list(range(per_device + 1)), (device, seqs[:10])
        assert len({p for p, d, _ in stored if d == device}) == 1


class _Probe:
    """A producer as the guard sees it: a metadata probe."""

    def __init__(self, answers: bool) -> None:
        self.answers, self.probes = answers, 0

    def list_topics(self, timeout: float) -> object:
        self.probes += 1
        if not self.answers:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return object()


class _CountingGuard(StallGuard):
    """Builds probes that answer when `kafka_answers`; counts replacements."""

    def __init__(self, rebuild_s: float) -> None:
        super().__init__(self._make, rebuild_s)
        self.kafka_answers = True
        self.built: list[_Probe] = []

    def _make(self) -> Any:
        self.built.append(_Probe(self.kafka_answers))
        return self.built[-1]

    def rebuild(self, forwarder: Any, new: Any = None) -> int:
        self.rebuilds += 1
        forwarder.producer = new
        return 0


def test_the_guard_waits_for_kafka_and_measures_the_stall_from_its_return() -> None:
    health = KafkaHealth()
    forwarder = SimpleNamespace(in_flight=1, kafka_health=health, producer=_Probe(False))
    guard = _CountingGuard(0.3)
    health.last_delivery = health.up_since = time.monotonic() - 60  # long stalled
    health.down_since = time.monotonic()  # ...because Kafka is away, just now
    guard.check(forwarder)  # type: ignore[arg-type]
    assert (guard.rebuilds, guard.built) == (0, []), "probed before the outage lasted"
    health.recovered()  # Kafka is back (a delivery, or the probe): the clock restarts
    health.last_delivery = time.monotonic() - 60
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 0, "rebuilt before the producer had time to deliver"
    time.sleep(0.35)
    guard.kafka_answers = False  # the broker does not answer a new producer: no rebuild
    guard.check(forwarder)  # type: ignore[arg-type]
    assert (guard.rebuilds, len(guard.built)) == (0, 1)
    guard.kafka_answers = True
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 0, "probed again before the retry period"
    time.sleep(0.35)
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 1 and forwarder.producer is guard.built[-1]
    health.last_delivery = time.monotonic() - 60
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 1, "at most one replacement per BRIDGE_KAFKA_REBUILD_S"
    forwarder.in_flight = 0
    time.sleep(0.35)
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 1, "nothing pending and Kafka reachable: nothing stalled"


def test_a_producer_that_finds_no_broker_is_replaced_once_a_new_one_does() -> None:
    """Seen in CI: Kafka was back, the sink's consumer had reconnected, and the
    forwarder's producer still had no broker 60 s later. Its own probe keeps
    failing, so only a new producer can tell that Kafka answers."""
    health = KafkaHealth()
    forwarder = SimpleNamespace(in_flight=0, kafka_health=health, producer=_Probe(False))
    guard = _CountingGuard(0.3)
    health.down_since = time.monotonic()
    guard.kafka_answers = False  # Kafka really away: new producers get no answer either
    time.sleep(0.35)
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 0 and health.down_since is not None
    guard.kafka_answers = True  # Kafka is back; the old producer still finds nothing
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 0, "probed again before the retry period"
    time.sleep(0.35)
    guard.check(forwarder)  # type: ignore[arg-type]
    assert guard.rebuilds == 1 and forwarder.producer is guard.built[-1]
    assert health.down_since is None, "reachable again: the bridge reports ready"
