"""The scored result: what the model worker writes to Kafka `analytics`,
MongoDB `iot.analytics` and MQTT `analytics/{device_id}/{sensor}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from contracts.events import ns_to_datetime, ns_to_iso


@dataclass(slots=True, frozen=True)
class ModelStamp:
    """Which model scored a result: name, kind, first 12 hex of the file's
    SHA-256, and when it was loaded (epoch ns)."""

    name: str
    kind: str
    sha256_12: str
    loaded_at_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "hash": self.sha256_12,
                "loaded_at": ns_to_iso(self.loaded_at_ns)}


@dataclass(slots=True)
class ScoredResult:
    event_id: str
    device_id: str
    sensor: str
    ts_ns: int
    value: float
    yhat: float | None
    yhat_lower: float | None
    yhat_upper: float | None
    # None: no model serves this sensor; the reading passes through unscored.
    model: ModelStamp | None
    scored_at_ns: int
    # Which part of the reading was scored: "value", an axis name, or "magnitude".
    field: str = "value"

    @property
    def residual(self) -> float | None:
        return None if self.yhat is None else self.value - self.yhat

    @property
    def anomaly(self) -> bool:
        if self.yhat_lower is None or self.yhat_upper is None:
            return False
        return not (self.yhat_lower <= self.value <= self.yhat_upper)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "device_id": self.device_id,
            "sensor": self.sensor,
            "ts": ns_to_iso(self.ts_ns),
            "ts_ns": self.ts_ns,
            "field": self.field,
            "value": self.value,
            "yhat": self.yhat,
            "yhat_lower": self.yhat_lower,
            "yhat_upper": self.yhat_upper,
            "residual": self.residual,
            "anomaly": self.anomaly,
            "model": None if self.model is None else self.model.to_dict(),
            "scored_at": ns_to_iso(self.scored_at_ns),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def to_document(self) -> dict[str, Any]:
        doc = self.to_dict()
        doc["_id"] = doc.pop("event_id")
        doc["ts"] = ns_to_datetime(self.ts_ns)
        doc["scored_at"] = ns_to_datetime(self.scored_at_ns)
        return doc
