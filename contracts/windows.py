"""Stream-analytics records that cross service boundaries: a closed tumbling
window (Kafka `readings.windows`, MongoDB `iot.windows`) and the running
statistics of a series (MongoDB `iot.stats`), as the worker writes them and the
API reads them.

Variance travels as `m2`, the sum of squared deviations from the mean
(Welford's form): summing squares of values near 1e9 would cancel away the
variance, and two `m2`s merge exactly with the parallel formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from contracts.events import ns_to_datetime

SCALAR_FIELD = "value"
MAGNITUDE_FIELD = "magnitude"


def series_id(device_id: str, sensor: str, field: str) -> str:
    """One series per (device, sensor, field); field is `value`, an axis, or `magnitude`."""
    return f"{device_id}|{sensor}|{field}"


def window_id(device_id: str, sensor: str, field: str, size_s: int, start_ns: int) -> str:
    return f"{series_id(device_id, sensor, field)}|{size_s}|{start_ns}"


@dataclass(slots=True)
class Moments:
    """Count, mean, m2, min, max of a set of values; merges exactly."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def merge(self, other: Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self.min, self.max = other.min, other.max
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / n
        self.m2 += other.m2 + delta * delta * self.count * other.count / n
        self.count = n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def sum(self) -> float:
        return self.mean * self.count

    @property
    def variance(self) -> float | None:
        """Population variance; None when empty."""
        return self.m2 / self.count if self.count else None

    @property
    def sample_variance(self) -> float | None:
        return self.m2 / (self.count - 1) if self.count > 1 else None

    @property
    def std(self) -> float | None:
        var = self.variance
        return None if var is None else math.sqrt(max(var, 0.0))

    def to_dict(self) -> dict[str, Any]:
        empty = self.count == 0
        return {
            "count": self.count,
            "sum": self.sum,
            "mean": None if empty else self.mean,
            "m2": self.m2,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Moments:
        count = int(data["count"])
        if count == 0:
            return cls()
        return cls(count=count, mean=float(data["mean"]), m2=float(data["m2"]),
                   min=float(data["min"]), max=float(data["max"]))


@dataclass(slots=True)
class WindowRecord:
    """A tumbling window [start, end) of one series, aligned to the epoch."""

    device_id: str
    sensor: str
    field: str
    size_s: int
    start_ns: int
    moments: Moments
    first_ts_ns: int
    last_ts_ns: int
    late_count: int = 0
    revision: int = 0
    # Smallest-size windows only: every (ts_ns, value) in the window, in time
    # order, so a range edge inside the window is answered from this document
    # alone (FerretDB on SQLite can only look documents up by `_id`). None when
    # unknown: over the cap, or the window was reloaded from saved state.
    points: list[tuple[int, float]] | None = None
    # Larger windows: the moments of each non-empty window of the next smaller
    # size inside this one, by start, so a range edge inside this window needs
    # one smaller window document, not all of them. None when unknown.
    children: list[tuple[int, Moments]] | None = None

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.size_s * 1_000_000_000

    @property
    def id(self) -> str:
        return window_id(self.device_id, self.sensor, self.field, self.size_s, self.start_ns)

    def to_document(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "device_id": self.device_id,
            "sensor": self.sensor,
            "field": self.field,
            "size_s": self.size_s,
            "start": ns_to_datetime(self.start_ns),
            "end": ns_to_datetime(self.end_ns),
            "start_ns": self.start_ns,
            **self.moments.to_dict(),
            "first_ts": ns_to_datetime(self.first_ts_ns),
            "last_ts": ns_to_datetime(self.last_ts_ns),
            "late_count": self.late_count,
            "revision": self.revision,
            **points_document(self.points),
            **children_document(self.children),
        }


POINTS_TS = "points_ts_ns"
POINTS_VALUE = "points_value"


def points_document(points: list[tuple[int, float]] | None) -> dict[str, Any]:
    """Two parallel arrays (FerretDB stores no nested arrays); absent when unknown."""
    if points is None:
        return {}
    return {POINTS_TS: [ts for ts, _ in points], POINTS_VALUE: [v for _, v in points]}


def points_from_document(doc: dict[str, Any]) -> list[tuple[int, float]] | None:
    ts, values = doc.get(POINTS_TS), doc.get(POINTS_VALUE)
    if ts is None or values is None or len(ts) != len(values):
        return None
    return [(int(t), float(v)) for t, v in zip(ts, values, strict=True)]


CHILD_KEYS = ("sub_start_ns", "sub_count", "sub_mean", "sub_m2", "sub_min", "sub_max")


def children_document(children: list[tuple[int, Moments]] | None) -> dict[str, Any]:
    """Parallel arrays, one entry per non-empty child; absent when unknown."""
    if children is None:
        return {}
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for start, m in children:
        for column, item in zip(columns, (start, m.count, m.mean, m.m2, m.min, m.max),
                                strict=True):
            column.append(item)
    return dict(zip(CHILD_KEYS, columns, strict=True))


def children_from_document(doc: dict[str, Any]) -> list[tuple[int, Moments]] | None:
    columns = [doc.get(key) for key in CHILD_KEYS]
    if any(c is None for c in columns) or len({len(c) for c in columns if c is not None}) != 1:
        return None
    return [(int(start), Moments(int(n), float(mean), float(m2), float(lo), float(hi)))
            for start, n, mean, m2, lo, hi in zip(*columns, strict=True)]
