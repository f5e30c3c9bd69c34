"""Checkpoints against the real Kafka and MongoDB-wire server: a stage killed
between checkpoints (the loop having committed batches its state does not
cover), or whose background checkpoint failed, re-reads those readings from
Kafka and leaves every window and statistic as an uninterrupted run does."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY
from pymongo import MongoClient

from contracts.clients import kafka_consumer, kafka_producer
from contracts.collections import insert_or_replace
from contracts.errors import ServiceUnavailable
from contracts.settings import Settings
from model_worker.analytics.engine import AnalyticsEngine, WindowPolicy
from model_worker.analytics.stage import AnalyticsStage
from model_worker.stage import ConsumedBatch
from tests.analytics.test_stage_services import (
    FAR_FUTURE,
    KilledBeforeStateWrite,
    StateWriteDies,
    analytics_settings,
    batches,
    make_stream,
    reading,
    stored,
)

pytestmark = pytest.mark.services
EXACT = ("count", "min", "max", "start_ns", "late_count", "first_ts", "last_ts")


def slow_checkpoints(settings: Settings) -> Settings:
    """No checkpoint falls due by itself during a test: only flush() writes one."""
    return analytics_settings(settings).model_copy(
        update={"analytics_checkpoint_interval_s": 3600.0})


def produce(settings: Settings, parts: list[ConsumedBatch]) -> None:
    """The batches' readings into Kafka at exactly the batches' offsets."""
    producer = kafka_producer(settings)
    for batch in parts:
        for r, partition in zip(batch.readings, batch.partitions, strict=True):
            producer.produce(settings.kafka_topic_readings, r.to_json(),
                             r.device_id.encode(), partition=partition)
    assert producer.flush(30) == 0


def expected(settings: Settings, parts: list[ConsumedBatch]) -> tuple[dict, dict]:
    engine = AnalyticsEngine(WindowPolicy.from_settings(settings))
    windows: dict[str, dict] = {}
    stats: dict[str, dict] = {}
    for batch in parts:
        out = engine.apply(batch.readings, batch.partitions, batch.offsets, 0)
        windows.update({w.id: w.to_document() for w in out.windows})
        stats.update({s.series_id: s.stats_document() for s in out.stats})
    windows.update({w.id: w.to_document() for w in engine.idle_close(FAR_FUTURE).windows})
    return windows, stats


def assert_same(mongo: MongoClient[dict[str, Any]], settings: Settings,
                want_windows: dict, want_stats: dict) -> None:
    """Counts, extremes and times exactly; mean and m2 to float rounding (the
    re-read readings are merged in other batches than the first time)."""
    windows = stored(mongo, settings, "windows")
    stats = stored(mongo, settings, "stats")
    assert set(windows) == set(want_windows)
    for key, doc in want_windows.items():
        got = windows[key]
        assert {k: got[k] for k in EXACT} == {k: doc[k] for k in EXACT}, key
        assert math.isclose(got["mean"], doc["mean"], rel_tol=1e-12), key
        assert math.isclose(got["m2"], doc["m2"], rel_tol=1e-9, abs_tol=1e-12), key
    assert any(doc["late_count"] for doc in windows.values()), "the stream had late readings"
    assert set(stats) == set(want_stats)
    for key, doc in want_stats.items():
        got = stats[key]
        assert (got["count"], got["min"], got["max"], got["first_ts_ns"], got["last_ts_ns"],
                got["last_value"]) == (doc["count"], doc["min"], doc["max"],
                                       doc["first_ts_ns"], doc["last_ts_ns"],
                                       doc["last_value"]), key
        assert math.isclose(got["mean"], doc["mean"], rel_tol=1e-12), key
        assert math.isclose(got["m2"], doc["m2"], rel_tol=1e-9), key


def last_published(settings: Settings) -> dict[str, dict]:
    """The windows topic read to its end: per `_id`, the last record (one
    device's windows share a partition, so they are in emission order)."""
    consumer: Consumer = kafka_consumer(settings, f"check-{settings.mongo_db}")
    topic = settings.kafka_topic_windows
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.kafka_partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    last: dict[str, dict] = {}
    done: set[int] = {p for p, end in ends.items() if end == 0}
    try:
        while len(done) < len(ends):
            for message in consumer.consume(500, timeout=2.0):
                assert message.error() is None, message.error()
                doc = orjson.loads(message.value() or b"null")
                last[doc["_id"]] = doc
                if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                    done.add(message.partition() or 0)
    finally:
        consumer.close()
    return last


def stream_with_late_readings() -> list[ConsumedBatch]:
    stream = make_stream(3, 2400)
    for i in range(300, 2400, 150):  # revisions, and some beyond the lateness
        stream.insert(i, reading((i - 150) * 0.1, float(i % 40)))
    return batches(stream, 200)


def stream_in_kafka(settings: Settings) -> tuple[Settings, list[ConsumedBatch], dict, dict]:
    """Slow-checkpoint settings, the stream's batches (already in Kafka at their
    offsets) and the windows and statistics an uninterrupted run gives."""
    settings = slow_checkpoints(settings)
    parts = stream_with_late_readings()
    for batch in parts:
        batch.topic = settings.kafka_topic_readings
    produce(settings, parts)
    want_windows, want_stats = expected(settings, parts)
    return settings, parts, want_windows, want_stats


def resent(batch: ConsumedBatch, first_offset: int) -> ConsumedBatch:
    """Readings the device sent again: the same event ids at new offsets."""
    again = ConsumedBatch(batch.topic)
    next_offset: dict[int, int] = defaultdict(lambda: first_offset)
    for r, partition in zip(batch.readings[:50], batch.partitions[:50], strict=True):
        again.readings.append(r)
        again.partitions.append(partition)
        again.offsets.append(next_offset[partition])
        next_offset[partition] += 1
    return again


def caught_up() -> float:
    return REGISTRY.get_sample_value("worker_analytics_caught_up_total") or 0.0


class StateWriteLost:
    """The state collection of a process killed at the instant of the state write."""

    def replace_one(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_restart_between_checkpoints_re_reads_kafka_and_changes_nothing(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]]) -> None:
    settings, parts, want_windows, want_stats = stream_in_kafka(kafka_topics)
    db = mongo[settings.mongo_db]

    first = AnalyticsStage(settings, kafka_producer(settings), db,
                           replay_consumer=kafka_consumer(settings, "replay-1"))
    for batch in parts[:3]:
        first.handle(batch, now_ns=0)
    first.flush()  # the last checkpoint: covers parts[:3]
    for batch in parts[3:6]:
        first.handle(batch, now_ns=0)
    # Killed inside the next checkpoint: its windows and statistics are written,
    # its state never is; meanwhile the loop handled and committed two more
    # batches (revising windows that checkpoint wrote).
    first.writer.states = StateWriteLost()  # type: ignore[assignment]
    first.flush()
    for batch in parts[6:8]:
        first.handle(batch, now_ns=0)
    del first

    before = caught_up()
    second = AnalyticsStage(settings, kafka_producer(settings), db,
                            replay_consumer=kafka_consumer(settings, "replay-2"))
    second.assigned([0, 1, 2])
    second.handle(parts[8], now_ns=0)  # the loop resumes at its committed offsets
    assert caught_up() - before == sum(len(b) for b in parts[3:8])
    second.handle(resent(parts[8], first_offset=10_000), now_ns=0)
    for batch in parts[9:]:
        second.handle(_shifted(batch, 20_000), now_ns=0)
    second.tick(FAR_FUTURE)
    second.close()

    assert_same(mongo, settings, want_windows, want_stats)
    published = last_published(settings)
    windows = stored(mongo, settings, "windows")
    assert set(published) == set(windows)
    assert all(published[k]["count"] == windows[k]["count"] for k in windows)


def test_failed_background_checkpoint_is_raised_and_recovered_from_kafka(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]]) -> None:
    settings, parts, want_windows, want_stats = stream_in_kafka(kafka_topics)
    db = mongo[settings.mongo_db]

    stage = AnalyticsStage(settings, kafka_producer(settings), db,
                           replay_consumer=kafka_consumer(settings, "replay"))
    for batch in parts[:4]:
        stage.handle(batch, now_ns=0)
    stage.flush()
    for batch in parts[4:7]:
        stage.handle(batch, now_ns=0)
    real_states = stage.writer.states
    stage.writer.states = StateWriteDies(real_states)  # type: ignore[assignment]
    stage.interval_s = 1e-9  # due at once: the next handle starts a background checkpoint
    stage.handle(parts[7], now_ns=0)
    while stage.writer.busy:
        time.sleep(0.01)
    stage.writer.states = real_states
    stage.interval_s = 3600.0
    # The next batch sees the failure and is refused; the loop delivers it again.
    with pytest.raises(ServiceUnavailable) as failed:
        stage.handle(parts[8], now_ns=0)
    assert isinstance(failed.value.__cause__, KilledBeforeStateWrite)
    assert not stage.engine.partitions, "memory ahead of the checkpoint was dropped"

    before = caught_up()
    for batch in parts[8:]:
        stage.handle(batch, now_ns=0)
    assert caught_up() - before == sum(len(b) for b in parts[4:8])
    stage.tick(FAR_FUTURE)
    stage.close()
    assert_same(mongo, settings, want_windows, want_stats)


def test_assignment_re_reads_up_to_the_committed_offsets(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]]) -> None:
    """The sensors stopped just before the crash: no batch follows, yet the
    windows and statistics of their last readings come out after the restart."""
    settings, parts, want_windows, want_stats = stream_in_kafka(kafka_topics)
    db = mongo[settings.mongo_db]

    first = AnalyticsStage(settings, kafka_producer(settings), db,
                           replay_consumer=kafka_consumer(settings, settings.worker_group))
    for batch in parts[:5]:
        first.handle(batch, now_ns=0)
    first.flush()
    for batch in parts[5:]:
        first.handle(batch, now_ns=0)
    del first  # killed: the checkpoint covers parts[:5], the loop committed everything
    commit_ends(settings, parts)

    before = caught_up()
    second = AnalyticsStage(settings, kafka_producer(settings), db,
                            replay_consumer=kafka_consumer(settings, settings.worker_group))
    second.assigned([0, 1, 2])
    assert caught_up() - before == sum(len(b) for b in parts[5:])
    second.tick(FAR_FUTURE)  # idle close: no batch arrives
    second.close()
    assert_same(mongo, settings, want_windows, want_stats)


def stats_counts(mongo: MongoClient[dict[str, Any]], settings: Settings) -> dict[str, int]:
    return {k: d["count"] for k, d in stored(mongo, settings, "stats").items()}


def commit_ends(settings: Settings, parts: list[ConsumedBatch]) -> None:
    """The loop's commits: everything in `parts`."""
    ends: dict[int, int] = {}
    for batch in parts:
        for partition, offset in zip(batch.partitions, batch.offsets, strict=True):
            ends[partition] = max(ends.get(partition, 0), offset + 1)
    group = kafka_consumer(settings, settings.worker_group)
    group.commit(offsets=[TopicPartition(settings.kafka_topic_readings, p, o)
                          for p, o in ends.items()], asynchronous=False)
    group.close()


def background_checkpoint(stage: AnalyticsStage, batch: ConsumedBatch) -> None:
    stage.interval_s = 1e-9  # due at once
    stage.handle(batch, now_ns=0)
    stage.writer.wait()
    stage.interval_s = 3600.0


def test_statistics_held_by_the_stats_interval_are_written_again_after_a_crash(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]]) -> None:
    """Checkpoints between statistics writes save states ahead of `iot.stats`;
    killed then, the restarted stage writes every loaded series' statistics
    again (nothing is left to re-read from Kafka that would touch them)."""
    settings, parts, want_windows, want_stats = stream_in_kafka(kafka_topics)
    settings = settings.model_copy(update={"analytics_stats_interval_s": 3600.0})
    db = mongo[settings.mongo_db]

    first = AnalyticsStage(settings, kafka_producer(settings), db,
                           replay_consumer=kafka_consumer(settings, settings.worker_group))
    for batch in parts[:3]:
        first.handle(batch, now_ns=0)
    first.flush()  # a flush writes the statistics whatever the interval
    flushed = stats_counts(mongo, settings)
    assert sum(flushed.values()) > 0
    background_checkpoint(first, parts[3])
    assert stats_counts(mongo, settings) == flushed, "held: the stats interval is not up"
    assert stored(mongo, settings, "analytics_state"), "the state was written all the same"
    first.stats_interval_s = 0.0
    background_checkpoint(first, parts[4])  # the interval is up: held ones written too
    _, at_4 = expected(settings, parts[:5])
    assert stats_counts(mongo, settings) == {k: d["count"] for k, d in at_4.items()}
    first.stats_interval_s = 3600.0
    for batch in parts[5:7]:
        first.handle(batch, now_ns=0)
    background_checkpoint(first, parts[7])
    assert stats_counts(mongo, settings) == {k: d["count"] for k, d in at_4.items()}
    del first  # killed: states cover parts[:8], iot.stats only parts[:5]
    commit_ends(settings, parts[:8])

    before = caught_up()
    second = AnalyticsStage(settings, kafka_producer(settings), db,
                            replay_consumer=kafka_consumer(settings, settings.worker_group))
    second.assigned([0, 1, 2])
    assert caught_up() == before, "nothing to re-read: the states cover the commits"
    second.flush()
    _, at_8 = expected(settings, parts[:8])
    assert stats_counts(mongo, settings) == {k: d["count"] for k, d in at_8.items()}
    for batch in parts[8:]:
        second.handle(batch, now_ns=0)
    second.tick(FAR_FUTURE)
    second.close()
    assert_same(mongo, settings, want_windows, want_stats)


def test_insert_or_replace_inserts_new_and_replaces_existing(
        mongo: MongoClient[dict[str, Any]], settings: Settings) -> None:
    coll = mongo[settings.mongo_db]["windows"]
    assert insert_or_replace(coll, [{"_id": f"w{i}", "n": 1} for i in range(3)]) == 0
    assert insert_or_replace(coll, [{"_id": f"w{i}", "n": 2} for i in range(1, 5)]) == 2
    assert insert_or_replace(coll, []) == 0
    assert {d["_id"]: d["n"] for d in coll.find()} == {"w0": 1, "w1": 2, "w2": 2, "w3": 2,
                                                       "w4": 2}


def _shifted(batch: ConsumedBatch, by: int) -> ConsumedBatch:
    return ConsumedBatch(batch.topic, batch.readings, batch.partitions,
                         [o + by for o in batch.offsets])
