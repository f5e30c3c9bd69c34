"""`sensors/{device_id}/{sensor}`: one reading as JSON,
`{"ts": ISO-8601 | epoch s/ms/µs/ns, "value": number | {axis: number}, "unit": str?, "seq": int?}`;
axes may also come as `"values": {axis: number}`, the canonical reading's name.

Device and sensor come from the topic. Unknown keys are ignored, so devices
can add fields before the bridge knows them.
"""

from __future__ import annotations

from typing import Any

from contracts.errors import DecodeError
from contracts.events import Reading, Source, make_event_id

from ._common import (
    check_ts,
    ident,
    number,
    number_map,
    optional_int,
    optional_unit,
    require,
    require_object,
    timestamp_to_ns,
)


def _axes(raw: object, name: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise DecodeError("wrong_type", f"{name} must be an object of numbers")
    if not raw:
        raise DecodeError("wrong_type", f"{name} is an empty object; give a number or axes")
    return number_map(name, raw)


def _measurement(body: dict[str, Any]) -> tuple[float | None, dict[str, float] | None]:
    """`value` (a number, or axes) and/or `values` (axes, as the canonical reading
    names them): at least one must be there."""
    raw_value, raw_values = body.get("value"), body.get("values")
    if raw_value is None and raw_values is None:
        raise DecodeError("missing_field", "the reading has no 'value' (or 'values')")
    values = None if raw_values is None else _axes(raw_values, "values")
    if isinstance(raw_value, dict):
        if values is not None:
            raise DecodeError("wrong_type", "value holds axes and so does values; send one")
        return None, _axes(raw_value, "value")
    return (None if raw_value is None else number("value", raw_value)), values


def decode_json_reading(fields: dict[str, str], document: object, source: Source,
                        received_at_ns: int) -> list[Reading]:
    device_id = ident("device_id", fields.get("device_id"))
    sensor = ident("sensor", fields.get("sensor"))
    body = require_object(document, "a reading")
    ts_ns = check_ts(timestamp_to_ns(require(body, "ts", "the reading")), received_at_ns)
    value, values = _measurement(body)
    return [Reading(
        event_id=make_event_id(device_id, sensor, ts_ns),
        device_id=device_id,
        sensor=sensor,
        ts_ns=ts_ns,
        value=value,
        values=values,
        unit=optional_unit(body.get("unit")),
        seq=optional_int("seq", body.get("seq")),
        source=source,
        received_at_ns=received_at_ns,
    )]
