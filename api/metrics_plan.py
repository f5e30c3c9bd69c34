"""Pure parts of `POST /compute/metrics` over stored windows addressed by
`_id`: which series a body key names (from `iot.stats`), up to where its
windows are stored, and a cache of windows that can no longer change.

Why `_id`s: FerretDB 1.24 on SQLite pushes down only `{_id: <string>}`
and, with the local stack's patch, `{_id: {$in: [strings]}}` (40 windows in
~10 ms at a million documents, against ~29 ms as 40 single finds); any
other filter reads the whole collection (tens of seconds at a million
readings). A window's `_id` is `device|sensor|field|size_s|start_ns`, so the
windows a request needs are named up front (`api.metrics_walk`) and fetched
in one `$in` round.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from api.metrics_logic import Series
from contracts.windows import MAGNITUDE_FIELD, SCALAR_FIELD, series_id


@dataclass(slots=True, frozen=True)
class SeriesRef:
    """One stored series and the newest event time stream analytics applied
    to it (`iot.stats` `last_ts_ns`)."""

    device_id: str
    sensor: str
    field: str
    last_ts_ns: int

    def window_id(self, size_s: int, start_ns: int) -> str:
        return f"{series_id(self.device_id, self.sensor, self.field)}|{size_s}|{start_ns}"


def stats_ids(key: str, device_id: str) -> list[str]:
    """`iot.stats` ids a key can name for one device."""
    ids = [series_id(device_id, key, SCALAR_FIELD), series_id(device_id, key, MAGNITUDE_FIELD)]
    sensor, dot, field_name = key.rpartition(".")
    if dot and sensor:
        ids.append(series_id(device_id, sensor, field_name))
    return ids


def choose_series(key: str, stats: list[dict[str, Any]]) -> tuple[Series, list[SeriesRef]] | None:
    """The series a key names and, per device, the one stored series that
    holds it; None when the stats cannot tell exactly (no stats for the key, or
    a device whose readings mix scalar and vector values), so the caller reads
    raw readings instead. Same precedence as the raw path: a sensor named
    `key` first, then `sensor.field`."""
    whole = [d for d in stats if d["sensor"] == key]
    if whole:
        by_device: dict[str, dict[str, dict[str, Any]]] = {}
        for doc in whole:
            by_device.setdefault(doc["device_id"], {})[doc["field"]] = doc
        refs = []
        for fields in by_device.values():
            if SCALAR_FIELD in fields and MAGNITUDE_FIELD in fields:
                return None  # mixed readings: one window per field cannot tell them apart
            chosen = fields.get(SCALAR_FIELD) or fields.get(MAGNITUDE_FIELD)
            if chosen is not None:
                refs.append(_ref(chosen))
        return Series(key, None), refs
    sensor, dot, field_name = key.rpartition(".")
    parts = [d for d in stats if dot and d["sensor"] == sensor and d["field"] == field_name]
    if not parts:
        return None
    return Series(sensor, field_name), [_ref(d) for d in parts]


def _ref(doc: dict[str, Any]) -> SeriesRef:
    return SeriesRef(doc["device_id"], doc["sensor"], doc["field"], int(doc["last_ts_ns"]))


def watermark(ref: SeriesRef, grace_ns: int) -> int:
    """Every window of the series ending by this time is stored, and a missing
    one held no reading: a window [s, e) is written when the series' stream
    time reaches e + grace, in the same batch write as the statistics and
    before them, and stream time is at least the stats' `last_ts_ns`."""
    return ref.last_ts_ns - grace_ns


def split(lo: int, hi: int, step: int) -> list[tuple[int, int, int]]:
    """(window start, part lo, part hi) of each aligned window of `step`
    overlapping [lo, hi)."""
    return [(start, max(lo, start), min(hi, start + step))
            for start in range(lo - lo % step, hi, step)]


def is_final(ref: SeriesRef, end_ns: int, grace_ns: int, lateness_ns: int) -> bool:
    """A window ending at `end_ns` can no longer be revised: readings are only
    applied while stream time is before their smallest window's end + grace +
    allowed lateness, and that end is at most `end_ns`."""
    return end_ns + grace_ns + lateness_ns <= ref.last_ts_ns


MISSING: dict[str, Any] = {}


class WindowCache:
    """LRU of final window documents (or MISSING: a final slot with no
    readings) by (`_id`, with points). Only final windows go in, so an entry
    never goes stale."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, bool], dict[str, Any]] = OrderedDict()

    def get(self, key: tuple[str, bool]) -> dict[str, Any] | None:
        doc = self._items.get(key)
        if doc is not None:
            self._items.move_to_end(key)
        return doc

    def put(self, key: tuple[str, bool], doc: dict[str, Any]) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = doc
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
