"""Pure steps of `POST /compute/metrics`: read the seed-compatible body, the
value a raw reading contributes, and turn merged `Moments` into the requested
metrics. No database here (window planning: `api.metrics_plan`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from api.timeparse import parse_range
from contracts.errors import SchemaError
from contracts.events import check_id
from contracts.windows import MAGNITUDE_FIELD, SCALAR_FIELD, Moments

METRICS = ("count", "min", "max", "average", "mean", "sum", "std")
RESERVED_KEYS = ("from", "to", "device_id")


class MetricsRequestError(SchemaError):
    """The body cannot be answered at all (bad times, bad device id, not an object)."""


@dataclass(slots=True)
class MetricsRequest:
    start_ns: int
    end_ns: int
    device_id: str | None
    sensors: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def parse_metrics_request(body: object, *, max_days: int) -> MetricsRequest:
    """Unknown keys and metrics become error strings (the seed's wording); the
    caller answers 400 when `sensors` ends up empty."""
    if not isinstance(body, dict):
        raise MetricsRequestError("the request body must be a JSON object")
    missing = [k for k in ("from", "to") if k not in body]
    if missing:
        raise MetricsRequestError(f"missing {' and '.join(repr(k) for k in missing)}: give "
                                  "'YYYY-MM-DD hh:mm:ss' (UTC) or ISO-8601 times")
    try:
        start_ns, end_ns = parse_range(body["from"], body["to"], max_days=max_days)
    except SchemaError as exc:
        raise MetricsRequestError(str(exc)) from exc
    device_id = body.get("device_id")
    if device_id is not None:
        try:
            device_id = check_id("device_id", device_id)
        except SchemaError as exc:
            raise MetricsRequestError(str(exc)) from exc
    request = MetricsRequest(start_ns, end_ns, device_id)
    for key, wanted in body.items():
        if key in RESERVED_KEYS:
            continue
        if not _is_sensor_name(key) or not isinstance(wanted, list):
            request.errors.append(f"Unexpected key {key} in the request body")
            continue
        metrics: list[str] = []
        for metric in wanted:
            if isinstance(metric, str) and metric in METRICS:
                if metric not in metrics:
                    metrics.append(metric)
            else:
                request.errors.append(f"Unexpected metric {metric} to compute for the sensor {key}")
        if metrics:
            request.sensors[key] = metrics
    return request


def _is_sensor_name(key: str) -> bool:
    try:
        check_id("sensor", key)
    except SchemaError:
        return False
    return True


@dataclass(slots=True, frozen=True)
class Series:
    """What a body key names: a sensor and, after a dot, one field of it
    (an axis or `magnitude`). A bare sensor means its scalar value, or the
    magnitude for vector sensors."""

    sensor: str
    field: str | None

    @property
    def window_fields(self) -> tuple[str, ...]:
        return (SCALAR_FIELD, MAGNITUDE_FIELD) if self.field is None else (self.field,)


def reading_value(doc: dict[str, Any], field_name: str | None) -> float | None:
    """The number a reading contributes to a series, as stream analytics sees it."""
    value, values = doc.get("value"), doc.get("values")
    if field_name is None:
        if value is not None:
            return float(value)
        field_name = MAGNITUDE_FIELD
    if field_name == SCALAR_FIELD:
        return None if value is None else float(value)
    if not values:
        return None
    if field_name == MAGNITUDE_FIELD:
        return math.sqrt(math.fsum(float(v) * float(v) for v in values.values()))
    component = values.get(field_name)
    return None if component is None else float(component)


def metric_values(moments: Moments, metrics: list[str]) -> dict[str, float | int | None]:
    empty = moments.count == 0
    known: dict[str, float | int | None] = {
        "count": moments.count,
        "min": None if empty else moments.min,
        "max": None if empty else moments.max,
        "average": None if empty else moments.mean,
        "mean": None if empty else moments.mean,
        "sum": None if empty else moments.sum,
        "std": moments.std,
    }
    return {metric: known[metric] for metric in metrics}
