"""`Image`: the seed pipeline's format,
`{"sensorId": str, "image": "17", "collectedAt": "YYYY-MM-DD HH:MM:SS"}` (UTC).

The reading is sensor "image" of device `sensorId` with `value = float(image)`.
`collectedAt` has only second resolution, so the event id also covers the
value: two different values in the same second stay two readings.
"""

from __future__ import annotations

from contracts.errors import DecodeError
from contracts.events import Reading, Source, make_event_id

from ._common import check_ts, ident, iso_to_ns, number, require, require_object

SENSOR = "image"


def _image_number(raw: object) -> float:
    if isinstance(raw, str):
        text = raw.strip()
        try:
            parsed = float(text)
        except ValueError as exc:
            raise DecodeError("wrong_type", f"image {raw[:32]!r} is not a number") from exc
        if "_" in text:  # float() accepts "1_000"; the seed format never does
            raise DecodeError("wrong_type", f"image {raw[:32]!r} is not a number")
        return number("image", parsed)
    return number("image", raw)


def decode_seed_image(fields: dict[str, str], document: object, source: Source,
                      received_at_ns: int) -> list[Reading]:
    body = require_object(document, "an Image message")
    device_id = ident("sensorId", require(body, "sensorId", "the Image message"))
    value = _image_number(require(body, "image", "the Image message"))
    collected_at = require(body, "collectedAt", "the Image message")
    if not isinstance(collected_at, str):
        raise DecodeError("wrong_type", "collectedAt must be 'YYYY-MM-DD HH:MM:SS' text")
    ts_ns = check_ts(iso_to_ns(collected_at), received_at_ns)
    return [Reading(
        event_id=make_event_id(device_id, SENSOR, ts_ns, value),
        device_id=device_id,
        sensor=SENSOR,
        ts_ns=ts_ns,
        value=value,
        source=source,
        received_at_ns=received_at_ns,
    )]
