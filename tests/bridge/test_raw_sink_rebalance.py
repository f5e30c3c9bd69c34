"""The raw sink across a rebalance on the real Kafka and MongoDB-wire server:
batches in flight when their partitions are revoked must not have their
offsets committed afterwards (the partition's new owner may be past them, so
the group's offsets would move back), the member keeps polling while a write
is held (longer than max.poll.interval.ms here), and every record is written."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from bridge import raw_sink
from bridge.raw_sink import RawSink
from bridge.sink_batch import Batch
from contracts.clients import SAFE_CONSUMER, kafka_consumer
from contracts.settings import Settings
from tests.bridge.test_raw_sink import SinkThread, committed, produce, readings, wait_for
from tests.faults.harness import service_stopped

pytestmark = pytest.mark.services

# The broker's minimum session; max.poll.interval.ms may not be below it. The
# first write is held longer than that: the member must stay in the group.
_SHORT_MS = "6000"


class GatedSink(RawSink):
    """Write number i waits for gates[i]: the test decides when a batch in
    flight is written (the write itself goes to the real server)."""

    def __init__(self, settings: Settings, db: Any, gates: list[threading.Event],
                 delay_s: float = 0.0) -> None:
        def make_consumer() -> Consumer:
            return kafka_consumer(settings, settings.bridge_sink_group,
                                  **{"session.timeout.ms": _SHORT_MS,
                                     "max.poll.interval.ms": _SHORT_MS,
                                     "heartbeat.interval.ms": "1000"})

        # With the factory, as in `python -m bridge`: a commit that hangs after
        # the broker restart replaces the consumer instead of stopping the sink.
        super().__init__(settings, make_consumer(), db, make_consumer=make_consumer)
        self.gates, self.calls, self.delay_s = gates, 0, delay_s

    def _write(self, batch: Batch) -> None:
        call, self.calls = self.calls, self.calls + 1
        if call < len(self.gates):
            assert self.gates[call].wait(60), "gate never opened"
        time.sleep(self.delay_s)
        super()._write(batch)


def test_batches_in_flight_during_a_rebalance_are_not_committed_afterwards(
        services: Settings, mongo: Any) -> None:
    settings = services.model_copy(update={"bridge_sink_batch_size": 100})
    topic, total = settings.kafka_topic_readings, 900
    produce(settings, topic, [r.to_json() for r in readings(total)])
    db = mongo[settings.mongo_db]
    first, second = threading.Event(), threading.Event()
    stop = threading.Event()
    stale = GatedSink(settings, db, [first, second])
    thread = threading.Thread(target=stale.run, args=(stop,), daemon=True)
    thread.start()
    other = None
    try:
        # Two batches in flight, held; a second member joins: a rebalance.
        wait_for(lambda: stale.calls >= 1 and len(stale._pending) == 2, 30, "two batches")
        other = SinkThread(settings, db)
        wait_for(lambda: stale.released >= 1 and stale._assigned, 30,
                 "the held member to be revoked and assigned again")
        held = [batch for _, batch in stale._pending]
        assert len(held) == 2 and held[0].records == 100
        # An eager rebalance revokes everything: the held batches commit nothing.
        assert all(not batch.offsets for batch in held), [b.offsets for b in held]
        released = stale.released
        time.sleep(int(_SHORT_MS) / 1000 + 2)  # the write held past max.poll.interval.ms
        assert stale.released == released and stale._assigned, "the held member was evicted"
        first.set()
        second.set()
        wait_for(lambda: db.readings.count_documents({}) == total
                 and committed(settings, topic) == total, 60, "everything written and committed")
        wait_for(lambda: not stale._pending, 30, "the held batches to be written")
        stop.set()
        thread.join(30)
        assert committed(settings, topic) == total, \
            "an offset consumed before the rebalance was committed, moving the group back"
    finally:
        first.set()
        second.set()
        stop.set()
        thread.join(30)
        if other is not None:
            other.close()
    assert db.readings.count_documents({}) == total


@pytest.mark.slow
def test_membership_lost_in_a_kafka_outage_with_batches_in_flight(
        services: Settings, mongo: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Scenario (c)'s path with the session shorter than the outage: Kafka
    stops while writes are in flight, the member's session expires, its
    partitions are lost and assigned again after Kafka returns. Every record
    is written, the group ends committed at the end of the topic, and the
    sink saw no gap in any partition's offsets."""
    settings = services.model_copy(update={"bridge_sink_batch_size": 50})
    topic, total = settings.kafka_topic_readings, 1_500
    produce(settings, topic, [r.to_json() for r in readings(total)])
    db = mongo[settings.mongo_db]
    stop = threading.Event()
    sink = GatedSink(settings, db, [], delay_s=0.2)  # about 250 documents/s: still busy
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: sink.calls >= 3, 30, "writes under way")
        with service_stopped("kafka"):
            time.sleep(int(_SHORT_MS) / 1000 * 2)
        # Delivered once Kafka is back: the synchronous commit under way blocks
        # till then, or hangs for good (librdkafka lost its coordinator), when
        # the sink replaces its consumer after 60 s; either way the partitions go.
        wait_for(lambda: sink.released >= 1, 90, "the membership to be lost")
        wait_for(lambda: db.readings.count_documents({}) == total
                 and committed(settings, topic) == total, 120, "everything written and committed")
    finally:
        stop.set()
        thread.join(30)
    assert not [r for r in caplog.records if r.getMessage() == "sink offset gap"]
    assert sink.readings.count_documents({}) == total


class SeekFailsConsumer(Consumer):
    """The real consumer, except that seek() fails as librdkafka's does for a
    partition whose fetcher is not started or is stopping (_STATE). Records
    what the keepalive poll returned."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.polled: list[Message] = []
        self.seeks = 0

    def poll(self, timeout: float = -1) -> Message | None:
        msg = super().poll(timeout)
        if msg is not None and msg.error() is None:
            self.polled.append(msg)
        return msg

    def seek(self, partition: TopicPartition) -> None:
        self.seeks += 1
        raise KafkaException(KafkaError(KafkaError._STATE))


def test_a_record_the_keepalive_poll_returns_is_written(services: Settings, mongo: Any) -> None:
    """While a write is held the sink polls (paused) to keep its membership;
    librdkafka drops what it prefetched for paused partitions, so that poll
    returns a record only from a partition assigned inside it. That record
    must be written before its offset is committed. The sink used to seek()
    back to it and drop it, so a failed seek left the position past a record
    nobody wrote, and the next commit skipped it for good."""
    settings = services.model_copy(update={"bridge_sink_batch_size": 50})
    topic, total = settings.kafka_topic_readings, 200
    produce(settings, topic, [r.to_json() for r in readings(total)])
    db = mongo[settings.mongo_db]
    consumer = SeekFailsConsumer({"bootstrap.servers": settings.kafka_bootstrap,
                                  "group.id": settings.bridge_sink_group, **SAFE_CONSUMER})
    sink = RawSink(settings, consumer, db)
    consumer.subscribe([topic, settings.kafka_topic_dlq], on_assign=sink._on_assign,
                       on_revoke=sink._on_revoke, on_lost=sink._on_lost)
    stop = threading.Event()
    try:
        # Nothing is assigned yet, so nothing is paused: the first keepalive poll
        # joins the group, is assigned the partitions and returns their first record.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not consumer.polled:
            sink._wait_paused(1.0)
        assert consumer.polled, "the keepalive poll returned no record"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                db.readings.count_documents({}) == total and committed(settings, topic) == total):
            sink._step(0.2, stop)
        while sink._pending:
            sink._wait_oldest(1.0)
            sink._commit_written()
    finally:
        stop.set()
        sink._writer.shutdown(wait=True)
        consumer.close()
    assert committed(settings, topic) == total
    seqs = {d["seq"] for d in db.readings.find({}, {"seq": 1})}
    assert seqs == set(range(total)), f"missing seq {sorted(set(range(total)) - seqs)[:10]}"


class CommitHangsConsumer(Consumer):
    """The real consumer, except that its first commit blocks until `release`
    is set, as librdkafka's does once it has lost its group coordinator for
    good (seen after the single broker restarted)."""

    def __init__(self, conf: dict[str, Any], release: threading.Event) -> None:
        super().__init__(conf)
        self.release, self.hung = release, False

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        if not self.hung:
            self.hung = True
            self.release.wait(120)
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return super().commit(*args, **kwargs)


def test_a_hung_commit_replaces_the_consumer(services: Settings, mongo: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink does not wait for a commit forever: after _COMMIT_HANG_S it
    abandons the consumer, a new one joins and reads everything uncommitted
    again, and every record is written and committed."""
    monkeypatch.setattr(raw_sink, "_COMMIT_HANG_S", 2.0)
    settings = services.model_copy(update={"bridge_sink_batch_size": 50})
    topic, total = settings.kafka_topic_readings, 300
    produce(settings, topic, [r.to_json() for r in readings(total)])
    db = mongo[settings.mongo_db]
    release, stop = threading.Event(), threading.Event()
    first = CommitHangsConsumer({"bootstrap.servers": settings.kafka_bootstrap,
                                 "group.id": settings.bridge_sink_group, **SAFE_CONSUMER}, release)
    sink = RawSink(settings, first, db,
                   lambda: kafka_consumer(settings, settings.bridge_sink_group))
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: db.readings.count_documents({}) == total
                 and committed(settings, topic) == total, 60, "everything written and committed")
    finally:
        release.set()
        stop.set()
        thread.join(30)
    assert first.hung and sink.replaced == 1 and sink.consumer is not first
    seqs = {d["seq"] for d in db.readings.find({}, {"seq": 1})}
    assert seqs == set(range(total))
