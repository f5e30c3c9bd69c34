"""Stream-analytics records that cross service boundaries: a closed tumbling
window (Kafka `readings.windows`, MongoDB `iot.windows`) and the running
statistics of a series (MongoDB `iot.stats`), as the worker writes them and the
API reads them.

Variance travels as `m2`, the sum of squared deviations from the mean
(Welford's form): summing squares of values near 1e9 would cancel away the
variance, and two `m2`s merge exactly with the parallel formula.
"""

from __future__ import annotations

import base64
import math
import struct
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
    children_size_s: int = 0  # the size of the children

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
            **children_document(self.children, self.children_size_s),
        }


# Window detail travels packed, little-endian, base64 in one string: FerretDB
# stores no nested arrays and decodes every array element of a document it
# reads (60 children as parallel arrays tripled the cost of a lookup); a
# string stays one JSON value on Kafka and MQTT too.
POINTS = "points"  # per reading: ts_ns int64, value float64
# the children's size in seconds (int64), then per non-empty child: start_ns,
# count (int64), mean, m2, min, max (float64)
CHILDREN = "children"
_POINT = struct.Struct("<qd")
_CHILD = struct.Struct("<qqdddd")
_SIZE = struct.Struct("<q")


def points_document(points: list[tuple[int, float]] | None) -> dict[str, Any]:
    if points is None:
        return {}
    packed = b"".join(_POINT.pack(ts, value) for ts, value in points)
    return {POINTS: base64.b64encode(packed).decode()}


def points_from_document(doc: dict[str, Any]) -> list[tuple[int, float]] | None:
    """The readings of a smallest window; None when the document has none."""
    text = doc.get(POINTS)
    if not isinstance(text, str):
        return None
    return [(int(ts), float(v)) for ts, v in _POINT.iter_unpack(base64.b64decode(text))]


def children_document(children: list[tuple[int, Moments]] | None,
                      size_s: int) -> dict[str, Any]:
    if children is None or size_s <= 0:
        return {}
    packed = _SIZE.pack(size_s) + b"".join(_CHILD.pack(start, m.count, m.mean, m.m2, m.min,
                                                       m.max) for start, m in children)
    return {CHILDREN: base64.b64encode(packed).decode()}


def children_from_document(doc: dict[str, Any],
                           size_s: int) -> list[tuple[int, Moments]] | None:
    """(start_ns, moments) of a larger window's non-empty children of `size_s`;
    None when the document has none, or children of another size (the writer
    had other window sizes)."""
    text = doc.get(CHILDREN)
    if not isinstance(text, str):
        return None
    packed = base64.b64decode(text)
    if len(packed) < _SIZE.size or _SIZE.unpack_from(packed)[0] != size_s:
        return None
    return [(start, Moments(count, mean, m2, lo, hi)) for start, count, mean, m2, lo, hi
            in _CHILD.iter_unpack(packed[_SIZE.size:])]
