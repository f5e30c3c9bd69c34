"""Shared builders for the analytics tests: readings, batches and an exact
reference recomputation (math.fsum, two passes) to compare against."""

from __future__ import annotations

import math
from collections.abc import Iterable

from contracts.events import NS_PER_S, Reading, make_event_id
from model_worker.analytics.engine import WindowPolicy

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
