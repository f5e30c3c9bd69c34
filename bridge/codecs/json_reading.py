"""`sensors/{device_id}/{sensor}`: one reading as JSON,
`{"ts": ISO-8601 | epoch s/ms/µs/ns, "value": number | {axis: number}, "unit": str?, "seq": int?}`.

Device and sensor come from the topic. Unknown keys are ignored, so devices
can add fields before the bridge knows them.
"""

from __future__ import annotations

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


def decode_json_reading(fields: dict[str, str], document: object, source: Source,
                        received_at_ns: int) -> list[Reading]:
    device_id = ident("device_id", fields.get("device_id"))
    sensor = ident("sensor", fields.get("sensor"))
    body = require_object(document, "a reading")
    ts_ns = check_ts(timestamp_to_ns(require(body, "ts", "the reading")), received_at_ns)
    raw_value = require(body, "value", "the reading")
    value: float | None = None
    values: dict[str, float] | None = None
    if isinstance(raw_value, dict):
        if not raw_value:
            raise DecodeError("wrong_type", "value is an empty object; give a number or axes")
        values = number_map("value", raw_value)
    else:
        value = number("value", raw_value)
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
