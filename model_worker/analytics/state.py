"""Analytics state of one Kafka partition and its documents in MongoDB
`iot.analytics_state`: the last applied offset together with every series'
stream time, open and revisable windows, running statistics and the hashes of
the event ids still inside the allowed lateness. One document per partition,
replaced whole, so state and offset always change together.

The series are stored packed: one zlib-compressed JSON blob (`packed`) instead
of nested documents. FerretDB converts every nested field of a document it
writes; for 500 series the nested form cost ~640 ms of its CPU per checkpoint
(six ~280 KB documents), the blob ~10-50 ms. Documents of the earlier nested
form (`series`) still load."""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np
import orjson

from contracts.errors import SchemaError
from contracts.events import NS_PER_S, ns_to_datetime
from contracts.windows import Moments, WindowRecord, series_id

# Stream time of a series that has seen nothing yet: earlier than any reading.
NO_TIME = -(2**62)


def event_hash(event_id: str) -> int:
    """64 bits of the event id: enough to tell the few thousand ids of one
    series' base window apart (collision odds ~1e-12), a quarter the size."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass(slots=True)
class Window:
    size_s: int
    start_ns: int
    moments: Moments
    first_ts_ns: int
    last_ts_ns: int
    late_count: int = 0
    revision: int = 0
    emitted: bool = False
    dirty: bool = True  # changed since it was last emitted
    # (ts_ns, value) of a smallest-size window while at most the points cap; None
    # when unknown. Memory only: a window reloaded from saved state has None.
    points: list[tuple[int, float]] | None = None
    children: dict[int, Moments] | None = None  # larger sizes; memory only as well
    children_size_s: int = 0

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.size_s * NS_PER_S

    def to_state(self) -> list[Any]:
        """A flat list (WINDOW_STATE order): thousands of windows go into every
        checkpoint, and a list is several times cheaper to build and encode than
        nested objects. A window always holds at least one reading."""
        m = self.moments
        return [self.size_s, self.start_ns, m.count, m.mean, m.m2, m.min, m.max,
                self.first_ts_ns, self.last_ts_ns, self.late_count, self.revision,
                self.emitted, self.dirty]

    @classmethod
    def from_state(cls, doc: list[Any] | dict[str, Any]) -> Window:
        if isinstance(doc, list):
            size_s, start, count, mean, m2, lo, hi, first, last, late, rev, emitted, dirty = doc
            return cls(int(size_s), int(start),
                       Moments(int(count), float(mean), float(m2), float(lo), float(hi)),
                       int(first), int(last), int(late), int(rev), bool(emitted), bool(dirty))
        return cls(int(doc["size_s"]), int(doc["start_ns"]), Moments.from_dict(doc["moments"]),
                   int(doc["first_ts_ns"]), int(doc["last_ts_ns"]), int(doc["late_count"]),
                   int(doc["revision"]), bool(doc["emitted"]), bool(doc["dirty"]))


@dataclass(slots=True)
class FieldState:
    """One (device, sensor, field) series: running statistics since its first
    reading and its windows per size, keyed by start."""

    device_id: str
    sensor: str
    field: str
    stats: Moments = dataclass_field(default_factory=Moments)
    first_ts_ns: int = 0
    last_ts_ns: int = NO_TIME
    last_value: float = math.nan
    windows: dict[int, dict[int, Window]] = dataclass_field(default_factory=dict)
    stats_dirty: bool = False

    @property
    def series_id(self) -> str:
        return series_id(self.device_id, self.sensor, self.field)

    def record(self, window: Window) -> WindowRecord:
        """A snapshot: later merges into the window must not alter a record in flight."""
        return WindowRecord(
            self.device_id, self.sensor, self.field, window.size_s, window.start_ns,
            Moments(window.moments.count, window.moments.mean, window.moments.m2,
                    window.moments.min, window.moments.max),
            window.first_ts_ns, window.last_ts_ns, window.late_count, window.revision,
            None if window.points is None else sorted(window.points),
            None if window.children is None else [
                (start, Moments(m.count, m.mean, m.m2, m.min, m.max))
                for start, m in sorted(window.children.items())],
            window.children_size_s)

    def stats_document(self) -> dict[str, Any]:
        """MongoDB `iot.stats` document (`_id` = series id); also the MQTT payload."""
        m = self.stats
        sample_var = m.sample_variance
        return {
            "_id": self.series_id, "device_id": self.device_id, "sensor": self.sensor,
            "field": self.field, **m.to_dict(),
            "variance": m.variance, "sample_variance": sample_var,
            "sample_std": None if sample_var is None else math.sqrt(max(sample_var, 0.0)),
            "first_ts": ns_to_datetime(self.first_ts_ns), "first_ts_ns": self.first_ts_ns,
            "last_ts": ns_to_datetime(self.last_ts_ns), "last_ts_ns": self.last_ts_ns,
            "last_value": self.last_value,
        }

    def to_state(self) -> dict[str, Any]:
        return {"field": self.field, "stats": self.stats.to_dict(),
                "first_ts_ns": self.first_ts_ns, "last_ts_ns": self.last_ts_ns,
                "last_value": self.last_value,
                "windows": [w.to_state() for by_start in self.windows.values()
                            for w in by_start.values()]}


@dataclass(slots=True)
class SeriesState:
    """One (device, sensor): its stream time (max event time accepted), the
    wall-clock time of its last reading (idle close; not persisted: a restart
    restarts the idle timers) and the event-id hashes per base window start."""

    device_id: str
    sensor: str
    partition: int
    stream_ns: int = NO_TIME
    last_wall_ns: int = 0
    seen: dict[int, set[int]] = dataclass_field(default_factory=dict)
    fields: dict[str, FieldState] = dataclass_field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        # uint64 little-endian, base64: ~half the characters of decimal numbers;
        # sorted, so the same state always gives the same bytes.
        seen = [{"start_ns": start, "hashes": base64.b64encode(
                    np.array(sorted(hashes), dtype=np.uint64).tobytes()).decode()}
                for start, hashes in self.seen.items()]
        return {"device_id": self.device_id, "sensor": self.sensor,
                "stream_ns": self.stream_ns, "seen": seen,
                "fields": [f.to_state() for f in self.fields.values()]}

    @classmethod
    def from_state(cls, doc: dict[str, Any], partition: int, now_ns: int) -> SeriesState:
        series = cls(doc["device_id"], doc["sensor"], partition, int(doc["stream_ns"]), now_ns)
        for entry in doc["seen"]:
            hashes = entry["hashes"]  # base64 packed, raw bytes in the nested form
            raw = base64.b64decode(hashes) if isinstance(hashes, str) else bytes(hashes)
            series.seen[int(entry["start_ns"])] = set(
                np.frombuffer(raw, dtype=np.uint64).tolist())
        for fdoc in doc["fields"]:
            last_value = fdoc["last_value"]  # JSON has no NaN: null
            state = FieldState(series.device_id, series.sensor, fdoc["field"],
                               Moments.from_dict(fdoc["stats"]), int(fdoc["first_ts_ns"]),
                               int(fdoc["last_ts_ns"]),
                               math.nan if last_value is None else float(last_value))
            for wdoc in fdoc["windows"]:
                window = Window.from_state(wdoc)
                state.windows.setdefault(window.size_s, {})[window.start_ns] = window
            series.fields[state.field] = state
        return series


@dataclass(slots=True, frozen=True)
class StateSnapshot:
    doc_id: str
    partition: int
    applied_offset: int
    series_json: bytes

    def document(self) -> dict[str, Any]:
        """Compressed here, off the worker's loop thread (zlib releases the GIL);
        level 1: a fifth of the bytes for the least CPU."""
        return {"_id": self.doc_id, "partition": self.partition,
                "applied_offset": self.applied_offset,
                "packed": zlib.compress(self.series_json, 1)}


@dataclass(slots=True)
class PartitionState:
    partition: int
    applied_offset: int = -1
    series: dict[tuple[str, str], SeriesState] = dataclass_field(default_factory=dict)

    def snapshot(self, doc_id: str) -> StateSnapshot:
        """The state as of now, encoded: later batches may change the state meanwhile."""
        return StateSnapshot(doc_id, self.partition, self.applied_offset,
                             orjson.dumps([s.to_state() for s in self.series.values()]))

    def to_document(self, doc_id: str) -> dict[str, Any]:
        return self.snapshot(doc_id).document()

    @classmethod
    def from_document(cls, doc: dict[str, Any], now_ns: int) -> PartitionState:
        try:
            partition = int(doc["partition"])
            state = cls(partition, int(doc["applied_offset"]))
            for sdoc in series_states(doc):
                series = SeriesState.from_state(sdoc, partition, now_ns)
                state.series[(series.device_id, series.sensor)] = series
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise SchemaError(f"analytics state {doc.get('_id')!r} is malformed: {exc!r}") from exc
        return state


def series_states(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The series of a state document, packed or in the earlier nested form."""
    if "packed" in doc:
        series: list[dict[str, Any]] = orjson.loads(zlib.decompress(doc["packed"]))
        return series
    return list(doc["series"])
