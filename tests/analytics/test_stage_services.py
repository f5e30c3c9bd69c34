"""AnalyticsStage against the real Kafka and MongoDB-wire server: stored
windows and statistics equal a recomputation from all readings, and a stage
killed mid-stream then fed the uncommitted batches again plus re-sent readings
leaves every window and statistic as an uninterrupted run does."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer
from prometheus_client import REGISTRY
from pymongo import MongoClient

from contracts.clients import kafka_consumer, kafka_producer
from contracts.errors import ServiceUnavailable
from contracts.events import NS_PER_S, Reading, make_event_id
from contracts.settings import Settings
from contracts.windows import window_id
from model_worker.analytics.engine import AnalyticsEngine, WindowPolicy, reading_fields
from model_worker.analytics.stage import AnalyticsStage
from model_worker.stage import ConsumedBatch

pytestmark = pytest.mark.services
FAR_FUTURE = 10**19 // 2  # any idle timeout has passed by then
CONTENT = ("count", "mean", "m2", "min", "max", "start_ns", "late_count")
T0 = 1_699_999_980 * NS_PER_S  # a multiple of 60 s


def reading(ts_s: float, value: float | None = None, *, device: str = "dev-1",
            sensor: str = "temp", values: dict[str, float] | None = None) -> Reading:
    ts_ns = T0 + round(ts_s * NS_PER_S)
    return Reading(make_event_id(device, sensor, ts_ns), device, sensor, ts_ns,
                   value=value, values=values)


def reference(data: list[float]) -> tuple[int, float, float, float, float]:
    mean = math.fsum(data) / len(data)
    var = math.fsum((x - mean) ** 2 for x in data) / len(data)
    return len(data), mean, math.sqrt(var), min(data), max(data)


def close_rel(actual: float | None, expected: float) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12)


def analytics_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"analytics_window_sizes_s": [10, 60],
                                       "analytics_grace_ms": 1000,
                                       "analytics_allowed_lateness_s": 30,
                                       "analytics_idle_timeout_s": 5.0})


def make_stream(seed: int, n: int) -> list[Reading]:
    """Two devices, one scalar and one three-axis sensor each, 0.1 s apart,
    shuffled within blocks of 20 readings (out of order, never too late)."""
    rng = random.Random(seed)
    stream: list[Reading] = []
    for i in range(n):
        device = f"dev-{i % 2}"
        if i % 3:
            stream.append(reading(i * 0.1, rng.gauss(21.5, 0.5), device=device))
        else:
            stream.append(reading(i * 0.1, device=device, sensor="acc", values={
                "x": rng.gauss(0, 1), "y": rng.gauss(0, 1), "z": rng.gauss(9.8, 0.1)}))
    for i in range(0, n, 20):
        block = stream[i:i + 20]
        rng.shuffle(block)
        stream[i:i + 20] = block
    return stream


def batches(stream: list[Reading], size: int, partitions: int = 3) -> list[ConsumedBatch]:
    """Kafka-like: device d lives in partition d % partitions, offsets count per partition."""
    next_offset: dict[int, int] = defaultdict(int)
    out = []
    for i in range(0, len(stream), size):
        batch = ConsumedBatch("readings")
        for r in stream[i:i + size]:
            part = int(r.device_id.rsplit("-", 1)[1]) % partitions
            batch.readings.append(r)
            batch.partitions.append(part)
            batch.offsets.append(next_offset[part])
            next_offset[part] += 1
        out.append(batch)
    return out


def stored(mongo: MongoClient[dict[str, Any]], settings: Settings, name: str) -> dict[str, dict]:
    return {d["_id"]: d for d in mongo[settings.mongo_db][name].find()}


def drain_windows(settings: Settings, expected: int, timeout_s: float = 20.0) -> list[dict]:
    consumer: Consumer = kafka_consumer(settings, f"check-{settings.mongo_db}")
    consumer.subscribe([settings.kafka_topic_windows])
    seen: list[dict] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    seen.append(orjson.loads(message.value() or b"null"))
    finally:
        consumer.close()
    return seen


def test_stored_windows_and_stats_equal_a_recomputation(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]]) -> None:
    settings = analytics_settings(kafka_topics)
    stream = make_stream(1, 3000)
    stage = AnalyticsStage(settings, kafka_producer(settings), mongo[settings.mongo_db])
    for batch in batches(stream, 250):
        stage.handle(batch, now_ns=0)
    stage.tick(FAR_FUTURE)  # every series idle: the last windows are emitted too
    stage.close()

    values: dict[str, list[float]] = defaultdict(list)
    for r in stream:
        for name, value in reading_fields(r):
            values[f"{r.device_id}|{r.sensor}|{name}"].append(value)
            for size in (10, 60):
                start = r.ts_ns - r.ts_ns % (size * NS_PER_S)
                values[window_id(r.device_id, r.sensor, name, size, start)].append(value)

    windows = stored(mongo, settings, "windows")
    stats = stored(mongo, settings, "stats")
    assert len(stats) == 2 * (1 + 4)
    assert len(windows) + len(stats) == len(values)
    for key, data in values.items():
        doc = windows.get(key) or stats[key]
        count, mean, std, lo, hi = reference(data)
        assert doc["count"] == count, key
        assert (doc["min"], doc["max"]) == (lo, hi), key
        assert close_rel(doc["mean"], mean) and close_rel(doc["std"], std), (key, doc, mean, std)
    for doc in stats.values():
        sample_std = doc["std"] * math.sqrt(doc["count"] / (doc["count"] - 1))
        assert close_rel(doc["sample_std"], sample_std)
    last = max(stream, key=lambda r: r.ts_ns)
    assert stats[f"{last.device_id}|{last.sensor}|value"]["last_ts_ns"] == last.ts_ns \
        or last.sensor == "acc"

    published = drain_windows(settings, expected=len(windows))
    latest: dict[str, dict] = {}
    for doc in published:
        if doc["_id"] not in latest or doc["revision"] >= latest[doc["_id"]]["revision"]:
            latest[doc["_id"]] = doc
    assert set(latest) == set(windows)
    assert all(latest[k]["count"] == windows[k]["count"] for k in windows)


class KilledBeforeStateWrite(Exception):
    pass


class StateWriteDies:
    """Stands in for the state collection at the instant of a kill -9: the
    window and statistics writes of the batch are done, the state is not."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.find_one(*args, **kwargs)

    def replace_one(self, *args: Any, **kwargs: Any) -> Any:
        raise KilledBeforeStateWrite


def test_killed_stage_and_replayed_readings_change_nothing(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]]) -> None:
    settings = analytics_settings(kafka_topics)
    rng = random.Random(5)
    stream = make_stream(2, 2400)
    # Some readings later than grace (revisions) and some beyond the lateness.
    for i in range(300, 2400, 150):
        stream.insert(i, reading((i - 150) * 0.1, rng.uniform(0, 40)))
    parts = batches(stream, 200)

    reference_engine = AnalyticsEngine(WindowPolicy.from_settings(settings))
    expected_windows: dict[str, dict] = {}
    expected_stats: dict[str, dict] = {}
    for batch in parts:
        out = reference_engine.apply(batch.readings, batch.partitions, batch.offsets, 0)
        expected_windows.update({w.id: w.to_document() for w in out.windows})
        expected_stats.update({s.series_id: s.stats_document() for s in out.stats})
    out = reference_engine.idle_close(FAR_FUTURE)
    expected_windows.update({w.id: w.to_document() for w in out.windows})

    db = mongo[settings.mongo_db]
    first = AnalyticsStage(settings, kafka_producer(settings), db)
    for batch in parts[:5]:
        first.handle(batch, now_ns=0)  # the loop committed these
    first.handle(parts[5], now_ns=0)  # handled, but killed before the loop committed
    first.writer.states = StateWriteDies(first.writer.states)  # type: ignore[assignment]
    with pytest.raises(ServiceUnavailable) as failed:
        first.handle(parts[6], now_ns=0)
    assert isinstance(failed.value.__cause__, KilledBeforeStateWrite)
    del first  # no close(): nothing is flushed or saved on a kill

    replayed_before = REGISTRY.get_sample_value("worker_analytics_replayed_total") or 0.0
    duplicates_before = REGISTRY.get_sample_value("worker_analytics_duplicates_total") or 0.0
    second = AnalyticsStage(settings, kafka_producer(settings), db)
    second.assigned([0, 1, 2])
    resent = ConsumedBatch("readings")  # the device re-sent earlier readings: new offsets
    for r in parts[6].readings[:50]:
        part = int(r.device_id.rsplit("-", 1)[1]) % 3
        resent.readings.append(r)
        resent.partitions.append(part)
        resent.offsets.append(10_000 + len(resent.readings))
    for batch in parts[5:7]:
        second.handle(batch, now_ns=0)
    second.handle(resent, now_ns=0)
    for batch in parts[7:]:
        second.handle(_shifted(batch, 20_000), now_ns=0)
    second.tick(FAR_FUTURE)
    replayed = (REGISTRY.get_sample_value("worker_analytics_replayed_total") or 0.0
                ) - replayed_before
    duplicates = (REGISTRY.get_sample_value("worker_analytics_duplicates_total") or 0.0
                  ) - duplicates_before
    assert (replayed, duplicates) == (len(parts[5]), 50), "skipped by offset, then by event id"

    windows = stored(mongo, settings, "windows")
    stats = stored(mongo, settings, "stats")
    assert set(windows) == set(expected_windows)
    for key, doc in expected_windows.items():
        assert {k: windows[key][k] for k in CONTENT} == {k: doc[k] for k in CONTENT}, key
    assert any(doc["late_count"] for doc in windows.values()), "the stream had late readings"
    assert set(stats) == set(expected_stats)
    for key, doc in expected_stats.items():
        got = stats[key]
        assert (got["count"], got["min"], got["max"], got["last_ts_ns"]) == (
            doc["count"], doc["min"], doc["max"], doc["last_ts_ns"]), key
        assert got["mean"] == doc["mean"] and got["m2"] == doc["m2"], key


def _shifted(batch: ConsumedBatch, by: int) -> ConsumedBatch:
    """The same readings at later offsets, as after re-sent readings took offsets."""
    return ConsumedBatch(batch.topic, batch.readings, batch.partitions,
                         [o + by for o in batch.offsets])
