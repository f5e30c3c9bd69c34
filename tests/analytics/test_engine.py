"""The pure analytics step: alignment, grace, lateness, idle close, revisions,
multi-axis fields, duplicates and replays, and the merge formula."""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Iterable

import pytest

from contracts.errors import ConfigError
from contracts.events import NS_PER_S, Reading, make_event_id
from contracts.windows import Moments
from model_worker.analytics.engine import AnalyticsEngine, Emissions, WindowPolicy
from model_worker.analytics.state import PartitionState, series_states

POLICY = WindowPolicy(sizes_s=(10, 60), grace_ns=NS_PER_S, lateness_ns=30 * NS_PER_S,
                      idle_ns=5 * NS_PER_S)
T0 = 1_699_999_980 * NS_PER_S  # a multiple of 60 s: windows start on it


def reading(ts_s: float, value: float | None = None, *, device: str = "dev-1",
            sensor: str = "temp", values: dict[str, float] | None = None,
            event_id: str | None = None) -> Reading:
    ts_ns = T0 + round(ts_s * NS_PER_S)
    return Reading(event_id or make_event_id(device, sensor, ts_ns), device, sensor, ts_ns,
                   value=value, values=values)


class Feed:
    """Hands readings to an engine as one partition with increasing offsets."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.offset = 0

    def batch(self, readings: list[Reading]) -> tuple[list[Reading], list[int], list[int]]:
        offsets = list(range(self.offset, self.offset + len(readings)))
        self.offset += len(readings)
        return readings, [self.partition] * len(readings), offsets


def reference(values: Iterable[float]) -> tuple[int, float, float, float, float]:
    """count, mean, population std, min, max, computed exactly enough to judge."""
    data = list(values)
    mean = math.fsum(data) / len(data)
    var = math.fsum((x - mean) ** 2 for x in data) / len(data)
    return len(data), mean, math.sqrt(var), min(data), max(data)


def close_rel(actual: float | None, expected: float, rel: float = 1e-9,
              abs_tol: float = 1e-12) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=rel, abs_tol=abs_tol)

NOW = 1_000 * NS_PER_S


def run(engine: AnalyticsEngine, feed: Feed, readings: list, now_ns: int = NOW) -> Emissions:
    return engine.apply(*feed.batch(readings), now_ns)


def emitted(out: Emissions, size_s: int = 10) -> dict[int, tuple]:
    """start (seconds after T0) -> (count, revision, late_count, closed_by)."""
    return {(w.start_ns - T0) // NS_PER_S: (w.moments.count, w.revision, w.late_count, why)
            for w, why in zip(out.windows, out.closed_by, strict=True) if w.size_s == size_s}


def test_windows_align_to_the_epoch_and_close_after_grace() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    out = run(engine, feed, [reading(12.5, 1.0), reading(19.9, 3.0), reading(20.0, 5.0),
                             reading(20.9, 6.0)])
    assert emitted(out) == {}, "stream time 20.9 s is within the 1 s grace of the end 20 s"
    out = run(engine, feed, [reading(21.0, 7.0)])
    window = next(w for w in out.windows if w.size_s == 10)
    assert window.start_ns == T0 + 10 * NS_PER_S and window.end_ns == T0 + 20 * NS_PER_S
    assert (window.moments.count, window.moments.mean, window.moments.min,
            window.moments.max) == (2, 2.0, 1.0, 3.0)
    assert (window.first_ts_ns, window.last_ts_ns) == (T0 + 12_500_000_000,
                                                       T0 + 19_900_000_000)


def test_out_of_order_within_grace_is_on_time() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    run(engine, feed, [reading(15, 1.0), reading(20.5, 2.0)])
    run(engine, feed, [reading(19.0, 3.0)])  # stream time 20.5 < end 20 + grace 1
    out = run(engine, feed, [reading(22, 4.0)])
    assert emitted(out) == {10: (2, 0, 0, "stream")}


def test_late_reading_within_lateness_revises_the_window() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    out = run(engine, feed, [reading(15, 1.0), reading(25, 2.0)])
    assert emitted(out) == {10: (1, 0, 0, "stream")}
    out = run(engine, feed, [reading(16, 3.0)])  # 25 >= 21: late; 25 < 20+1+30: accepted
    assert emitted(out) == {10: (2, 1, 1, "stream")}
    assert out.windows[0].moments.mean == 2.0
    out = run(engine, feed, [reading(17, 5.0), reading(18, 7.0)])
    assert emitted(out) == {10: (4, 2, 3, "stream")}, "one re-emission per batch"


def test_very_late_reading_is_counted_not_applied() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    run(engine, feed, [reading(15, 1.0), reading(60, 2.0)])
    late = reading(15.5, 100.0)
    out = run(engine, feed, [late])  # 60 >= 20 + 1 + 30
    assert out.too_late == [late]
    assert out.windows == [] and out.stats == []
    stats = engine.partitions[0].series[("dev-1", "temp")].fields["value"].stats
    assert (stats.count, stats.max) == (2, 2.0)


def test_idle_timeout_emits_the_last_window_and_later_data_revises_it() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    run(engine, feed, [reading(31, 1.0), reading(33, 2.0)], now_ns=NOW)
    assert engine.idle_close(NOW + 4 * NS_PER_S).windows == [], "not idle for 5 s yet"
    out = engine.idle_close(NOW + 5 * NS_PER_S)
    assert emitted(out) == {30: (2, 0, 0, "idle")}
    assert emitted(out, 60) == {0: (2, 0, 0, "idle")}
    assert out.partitions == {0}
    assert engine.idle_close(NOW + 9 * NS_PER_S).windows == [], "emitted once, not every tick"
    out = run(engine, feed, [reading(35, 3.0), reading(41, 4.0)], now_ns=NOW + 10 * NS_PER_S)
    assert emitted(out) == {30: (3, 1, 0, "stream")}


def test_multi_axis_readings_give_one_series_per_axis_and_magnitude() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    run(engine, feed, [reading(1, values={"x": 3.0, "y": 4.0, "z": 0.0}, sensor="acc"),
                       reading(2, values={"x": 6.0, "y": 8.0, "z": 0.0}, sensor="acc")])
    out = run(engine, feed, [reading(12, values={"x": 0.0, "y": 0.0, "z": 1.0}, sensor="acc")])
    means = {w.field: w.moments.mean for w in out.windows if w.size_s == 10}
    assert means == {"x": 4.5, "y": 6.0, "z": 0.0, "magnitude": 7.5}


def test_duplicates_and_replayed_offsets_change_nothing() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    first = [reading(t, float(t)) for t in range(0, 25)]
    run(engine, feed, first)
    before = engine.partitions[0].to_document("p0")
    out = run(engine, feed, [first[3], first[20], first[24]])  # re-sent: new offsets
    assert out.duplicates == 3 and out.stats == [] and out.windows == []
    out = engine.apply(first[:5], [0] * 5, list(range(5)), NOW)  # redelivered batch
    assert out.replayed == 5 and out.stats == []
    after = engine.partitions[0].to_document("p0")
    assert series_states(after) == series_states(before)


def test_restored_state_continues_exactly() -> None:
    rng = random.Random(7)
    stream = [reading(i * 0.37, rng.gauss(20, 3)) for i in range(600)]
    rng.shuffle(stream)  # out of order, some late, some too late

    whole, feed = AnalyticsEngine(POLICY), Feed()
    for i in range(0, 600, 50):
        run(whole, feed, stream[i:i + 50])

    broken, feed = AnalyticsEngine(POLICY), Feed()
    for i in range(0, 300, 50):
        run(broken, feed, stream[i:i + 50])
    saved = broken.partitions[0].to_document("p0")
    restored = AnalyticsEngine(POLICY)
    restored.partitions[0] = PartitionState.from_document(saved, NOW)
    feed.offset = 200  # the uncommitted tail is delivered again, then the rest
    for i in range(200, 600, 50):
        run(restored, feed, stream[i:i + 50])
    assert restored.partitions[0].to_document("p0") == whole.partitions[0].to_document("p0")


def nested_window(packed: list) -> dict:
    size_s, start, count, mean, m2, lo, hi, first, last, late, revision, emitted, dirty = packed
    return {"size_s": size_s, "start_ns": start,
            "moments": Moments(count, mean, m2, lo, hi).to_dict(), "first_ts_ns": first,
            "last_ts_ns": last, "late_count": late, "revision": revision, "emitted": emitted,
            "dirty": dirty}


def test_state_documents_are_packed_and_the_nested_form_still_loads() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    run(engine, feed, [reading(t * 0.7, 20.0 + t % 3) for t in range(40)])
    run(engine, feed, [reading(30.0, math.nan, sensor="broken")])  # empty, last value NaN
    assert math.isnan(engine.partitions[0].series[("dev-1", "broken")].fields["value"].last_value)
    packed = engine.partitions[0].to_document("p0")
    assert set(packed) == {"_id", "partition", "applied_offset", "packed"}
    assert isinstance(packed["packed"], bytes)
    assert PartitionState.from_document(packed, NOW).to_document("p0") == packed
    # The nested form earlier workers wrote: hashes as uint64 little-endian bytes.
    nested = {k: v for k, v in packed.items() if k != "packed"}
    nested["series"] = series_states(packed)
    for series in nested["series"]:
        for entry in series["seen"]:
            entry["hashes"] = base64.b64decode(entry["hashes"])
        for field in series["fields"]:
            field["last_value"] = math.nan if field["last_value"] is None else field["last_value"]
            field["windows"] = [nested_window(w) for w in field["windows"]]
    assert PartitionState.from_document(nested, NOW).to_document("p0") == packed


def test_policy_rejects_sizes_that_are_not_multiples() -> None:
    with pytest.raises(ConfigError):
        WindowPolicy((10, 15), 0, 0, 1)
    with pytest.raises(ConfigError):
        WindowPolicy((), 0, 0, 1)


def test_parallel_merge_equals_direct_moments() -> None:
    rng = random.Random(3)
    data = [rng.uniform(-5, 5) for _ in range(1000)]
    merged = Moments()
    for i in range(0, 1000, 137):
        part = Moments()
        for x in data[i:i + 137]:
            part.add(x)
        merged.merge(part)
    count, mean, std, lo, hi = reference(data)
    assert merged.count == count and (merged.min, merged.max) == (lo, hi)
    assert close_rel(merged.mean, mean, 1e-12) and close_rel(merged.std, std, 1e-12)


def test_non_finite_values_are_counted_and_skipped() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    out = run(engine, feed, [reading(1, math.nan), reading(2, 2.0), reading(3, math.inf)])
    assert out.invalid == 2
    assert engine.partitions[0].series[("dev-1", "temp")].fields["value"].stats.count == 1
