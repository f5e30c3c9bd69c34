"""The canonical reading: what the bridge puts on Kafka `readings` and in
MongoDB `iot.readings`, and what every consumer reads back.

Times are UTC epoch nanoseconds as Python ints all the way through (Sensor
Logger sends nanoseconds above 2**53, which a float would round). BSON keeps
milliseconds, so documents carry `ts` (a datetime) and `ts_ns` (the exact int).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from contracts.errors import SchemaError

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
MAX_ID_LENGTH = 128
_FORBIDDEN_IN_IDS = frozenset("/+#\x00")


def check_id(kind: str, value: object) -> str:
    """A device id or sensor name, validated once at the boundary.

    They become MQTT topic levels and MongoDB filter values, so they must be
    plain non-empty strings without topic wildcards, separators or a leading `$`
    (which would also read as a MongoDB operator).
    """
    if not isinstance(value, str):
        raise SchemaError(f"{kind} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_ID_LENGTH:
        raise SchemaError(f"{kind} must be 1..{MAX_ID_LENGTH} characters, got {len(value)}")
    if value[0] == "$" or not _FORBIDDEN_IN_IDS.isdisjoint(value) or not value.isprintable():
        raise SchemaError(f"{kind} {value!r} contains a character not allowed in ids")
    return value


def check_number(kind: str, value: object) -> float:
    """A finite float; bools are refused although Python counts them as ints."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{kind} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise SchemaError(f"{kind} must be finite, got {value!r}")
    return number


def make_event_id(device_id: str, sensor: str, ts_ns: int, *extra: object) -> str:
    """Stable id derived from content: the same reading always gets the same id."""
    key = "\x1f".join((device_id, sensor, str(ts_ns), *map(str, extra)))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_to_datetime(ts_ns: int) -> datetime:
    """UTC datetime truncated to milliseconds, BSON's precision (integer math:
    a float of epoch seconds would turn .123 into .122999)."""
    return EPOCH + timedelta(milliseconds=ts_ns // NS_PER_MS)


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat()[:19]  # YYYY-MM-DDTHH:MM:SS


def ns_to_iso(ts_ns: int) -> str:
    """`2026-01-02T03:04:05.678Z`, truncated to milliseconds like ns_to_datetime.
    Every reading the bridge forwards goes through here: building a datetime
    each time was ~2 µs of its ~20 µs per message, so the second's text is
    cached (readings arrive in time order, so most share their second)."""
    seconds, millis = divmod(ts_ns // NS_PER_MS, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


def datetime_to_ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


@dataclass(slots=True, frozen=True)
class Source:
    """Where a reading came in: MQTT topic (or HTTP path), codec and QoS."""

    topic: str
    codec: str
    qos: int = 1


@dataclass(slots=True)
class Reading:
    event_id: str
    device_id: str
    sensor: str
    ts_ns: int
    value: float | None = None
    values: dict[str, float] | None = None
    unit: str | None = None
    seq: int | None = None
    source: Source | None = None
    received_at_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the payload of Kafka `readings`."""
        return {
            "event_id": self.event_id,
            "device_id": self.device_id,
            "sensor": self.sensor,
            "ts": ns_to_iso(self.ts_ns),
            "ts_ns": self.ts_ns,
            "value": self.value,
            "values": self.values,
            "unit": self.unit,
            "seq": self.seq,
            "source": None if self.source is None else {
                "topic": self.source.topic, "codec": self.source.codec, "qos": self.source.qos},
            "received_at_ns": self.received_at_ns,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def to_document(self) -> dict[str, Any]:
        """MongoDB `iot.readings` document; `_id` is the event id so replays are no-ops."""
        doc = self.to_dict()
        doc["_id"] = doc.pop("event_id")
        doc["ts"] = ns_to_datetime(self.ts_ns)
        doc["received_at"] = ns_to_datetime(self.received_at_ns)
        return doc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reading:
        try:
            source = data.get("source")
            values = data.get("values")
            return cls(
                event_id=data["event_id"],
                device_id=data["device_id"],
                sensor=data["sensor"],
                ts_ns=int(data["ts_ns"]),
                value=None if data.get("value") is None else float(data["value"]),
                values=None if values is None else {k: float(v) for k, v in values.items()},
                unit=data.get("unit"),
                seq=data.get("seq"),
                source=None if source is None else Source(
                    source["topic"], source["codec"], int(source.get("qos", 1))),
                received_at_ns=int(data.get("received_at_ns") or 0),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SchemaError(f"not a canonical reading: {exc!r}") from exc

    @classmethod
    def from_json(cls, payload: bytes) -> Reading:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"reading is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SchemaError("reading is not a JSON object")
        return cls.from_dict(data)

    def magnitude(self) -> float | None:
        """Scalar view of the reading: `value`, or the Euclidean norm of `values`."""
        if self.value is not None:
            return self.value
        if self.values:
            return math.sqrt(math.fsum(v * v for v in self.values.values()))
        return None
