"""Smallest windows carry their readings (`points`) so the API can answer a
range edge inside one from the window document alone: complete, in time
order, across batches and late revisions; none over the cap or after a
reload from saved state (unknown, so the API reads raw readings there)."""

from __future__ import annotations

import dataclasses

import pytest

from contracts.events import NS_PER_S
from contracts.windows import POINTS, Moments, WindowRecord, points_from_document
from model_worker.analytics.engine import AnalyticsEngine, Emissions
from model_worker.analytics.state import PartitionState

from .test_engine import NOW, POLICY, T0, Feed, reading, run

WITH_POINTS = dataclasses.replace(POLICY, points_max=4)


def base_windows(out: Emissions) -> dict[int, WindowRecord]:
    return {(w.start_ns - T0) // NS_PER_S: w for w in out.windows if w.size_s == 10}


def test_points_are_every_reading_of_the_window_in_time_order() -> None:
    engine, feed = AnalyticsEngine(WITH_POINTS), Feed()
    run(engine, feed, [reading(3.5, 2.0), reading(1.25, 1.0)])
    out = run(engine, feed, [reading(7.0, 3.0), reading(12.0, 9.0)])
    window = base_windows(out)[0]
    assert window.points == [(T0 + 1_250_000_000, 1.0), (T0 + 3_500_000_000, 2.0),
                             (T0 + 7 * NS_PER_S, 3.0)]
    doc = window.to_document()
    assert isinstance(doc[POINTS], str)
    assert points_from_document(doc) == window.points
    assert all(w.points is None for w in out.windows if w.size_s == 60)


def test_late_reading_revises_the_points_and_the_cap_drops_them() -> None:
    engine, feed = AnalyticsEngine(WITH_POINTS), Feed()
    run(engine, feed, [reading(1.0, 1.0), reading(2.0, 2.0), reading(15.0, 0.0)])
    out = run(engine, feed, [reading(5.0, 5.0)])  # late, within lateness
    window = base_windows(out)[0]
    assert window.revision == 1
    assert [v for _, v in window.points or []] == [1.0, 2.0, 5.0]
    out = run(engine, feed, [reading(6.0, 6.0), reading(7.0, 7.0)])  # 5 > cap of 4
    window = base_windows(out)[0]
    assert window.moments.count == 5 and window.points is None
    assert POINTS not in window.to_document()


def test_disabled_by_default_and_unknown_after_a_reload() -> None:
    engine, feed = AnalyticsEngine(POLICY), Feed()
    run(engine, feed, [reading(1.0, 1.0)])
    assert base_windows(run(engine, feed, [reading(12.0, 2.0)]))[0].points is None
    engine, feed = AnalyticsEngine(WITH_POINTS), Feed()
    run(engine, feed, [reading(1.0, 1.0), reading(12.0, 2.0)])
    saved = engine.partitions[0].to_document("p0")
    engine = AnalyticsEngine(WITH_POINTS)
    engine.partitions[0] = PartitionState.from_document(saved, NOW)
    out = run(engine, feed, [reading(3.0, 3.0), reading(25.0, 4.0)])  # revises [0, 10)
    revised = base_windows(out)
    assert revised[0].moments.count == 2 and revised[0].points is None
    assert revised[10].moments.count == 1 and revised[10].points is None  # held before


def test_larger_windows_hold_their_smaller_windows_moments() -> None:
    policy = dataclasses.replace(POLICY, children=True)
    engine, feed = AnalyticsEngine(policy), Feed()
    run(engine, feed, [reading(1.0, 1.0), reading(12.0, 2.0), reading(14.0, 4.0)])
    out = run(engine, feed, [reading(33.0, 8.0), reading(61.5, 0.0)])
    minute = next(w for w in out.windows if w.size_s == 60)
    assert minute.children is not None and minute.children_size_s == 10
    assert [(start - T0, kid.count, kid.mean) for start, kid in minute.children] == [
        (0, 1, 1.0), (10 * NS_PER_S, 2, 3.0), (30 * NS_PER_S, 1, 8.0)]
    total = Moments()
    for _, kid in minute.children:
        total.merge(kid)
    assert (total.count, total.mean) == (minute.moments.count, minute.moments.mean)
    assert total.m2 == pytest.approx(minute.moments.m2, rel=1e-12)
    assert all(w.children is None for w in out.windows if w.size_s == 10)
