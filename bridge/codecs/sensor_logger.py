"""`sensor-logger`: the Sensor Logger app's batch (HTTP push and MQTT share it),
`{"messageId": int, "sessionId": str, "deviceId": str,
  "payload": [{"name": str, "time": int ns, "values": {field: number}, "accuracy": int?}]}`.

One reading per entry. Rules (documented in the README):
- `time` is UTC epoch ns as a JSON integer (or digits in a string, as the app's
  file exports write it); a float is refused, it cannot hold ns above 2**53.
- Fields may sit in `values` or, as in newer app versions, beside `name` and `time`.
- Numeric fields become the reading; strings, booleans and nulls (batteryState,
  lowPowerMode, camera images) are left out. An entry with no numeric field
  (the app's "Test Push" sends `values: []`) is skipped; an empty `payload`
  yields no readings. Neither is an error.
- A known scalar sensor (light, barometer, battery, ...) gets its main field as
  `value`; if it has more numeric fields they are all kept in `values` too.
  Any other single-field entry becomes `value`, several fields `values`.
- One malformed entry rejects the whole message: the raw batch goes to the
  dead letters intact and can be replayed after a fix.
"""

from __future__ import annotations

from typing import Any

from contracts.errors import DecodeError
from contracts.events import Reading, Source, make_event_id

from ._common import (
    check_ts,
    ident,
    number_map,
    optional_int,
    require,
    require_object,
)

# Sensor name (lower case, as the app sends it) -> the field that is its value.
SCALAR_FIELDS = {
    "light": "lux",
    "barometer": "pressure",
    "watchbarometer": "pressure",
    "microphone": "dBFS",
    "watchmicrophone": "dBFS",
    "battery": "batteryLevel",
    "batterytemp": "temperature",
    "compass": "magneticBearing",
    "watchcompass": "magneticBearing",
    "pedometer": "steps",
    "brightness": "brightness",
    "heartrate": "bpm",
}
# Units the app documents per sensor; uncalibrated acceleration differs by platform.
UNITS = {
    "accelerometer": "m/s^2",
    "totalacceleration": "m/s^2",
    "gravity": "m/s^2",
    "gyroscope": "rad/s",
    "gyroscopeuncalibrated": "rad/s",
    "magnetometer": "uT",
    "magnetometeruncalibrated": "uT",
    "barometer": "hPa",
    "light": "lx",
    "microphone": "dBFS",
    "battery": "fraction",
    "batterytemp": "degC",
    "compass": "deg",
    "heartrate": "bpm",
}
_ENTRY_KEYS = frozenset({"name", "time", "values", "accuracy", "seconds_elapsed"})


def _time_ns(raw: object, where: str) -> int:
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise DecodeError("wrong_type", f"{where}: time must be an integer of epoch "
                                        f"nanoseconds, got {type(raw).__name__} {str(raw)[:32]}")
    return raw


def _fields(entry: dict[str, Any], where: str) -> dict[str, Any]:
    if "values" not in entry:
        return {key: value for key, value in entry.items() if key not in _ENTRY_KEYS}
    values = entry["values"]
    if isinstance(values, list) and not values:
        return {}
    if not isinstance(values, dict):
        raise DecodeError("wrong_type", f"{where}: values must be an object of numbers")
    return values


def _reading(entry: dict[str, Any], device_id: str, seq: int | None, source: Source,
             received_at_ns: int, where: str) -> Reading | None:
    sensor = ident(f"{where} name", require(entry, "name", where))
    numeric = {key: value for key, value in _fields(entry, where).items()
               if value is not None and not isinstance(value, str | bool)}
    if not numeric:
        return None
    values = number_map(sensor, numeric)
    optional_int(f"{where} accuracy", entry.get("accuracy"))
    ts_ns = check_ts(_time_ns(require(entry, "time", where), where), received_at_ns)
    kind = sensor.lower()
    main_field = SCALAR_FIELDS.get(kind)
    if main_field in values:
        value: float | None = values[main_field]
        multi: dict[str, float] | None = values if len(values) > 1 else None
    elif len(values) == 1:
        value, multi = next(iter(values.values())), None
    else:
        value, multi = None, values
    return Reading(
        event_id=make_event_id(device_id, sensor, ts_ns),
        device_id=device_id,
        sensor=sensor,
        ts_ns=ts_ns,
        value=value,
        values=multi,
        unit=UNITS.get(kind),
        seq=seq,
        source=source,
        received_at_ns=received_at_ns,
    )


def decode_sensor_logger(fields: dict[str, str], document: object, source: Source,
                         received_at_ns: int) -> list[Reading]:
    batch = require_object(document, "a Sensor Logger batch")
    entries = batch.get("payload")
    if entries is None:
        raise DecodeError("missing_field", "the Sensor Logger batch has no 'payload'")
    if not isinstance(entries, list):
        raise DecodeError("wrong_type", "payload must be an array of entries")
    if not entries:
        return []
    device_id = ident("deviceId", require(batch, "deviceId", "the Sensor Logger batch"))
    seq = optional_int("messageId", batch.get("messageId"))
    session_id = batch.get("sessionId")
    if session_id is not None and not isinstance(session_id, str):
        raise DecodeError("wrong_type", "sessionId must be a string")
    readings = []
    for index, entry in enumerate(entries):
        where = f"payload[{index}]"
        reading = _reading(require_object(entry, where), device_id, seq, source,
                           received_at_ns, where)
        if reading is not None:
            readings.append(reading)
    return readings
