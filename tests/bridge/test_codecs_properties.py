"""Property tests: whatever arrives, a codec returns readings or raises a
DecodeError with a known reason, never any other exception."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bridge.codecs import DECODE_REASONS, decode
from bridge.routes import Route
from contracts.errors import DecodeError
from contracts.events import Reading

RECEIVED_NS = 1714564800_000000000
ROUTES = [
    Route("sensors", "sensors/{device_id}/{sensor}", "json_reading", "readings"),
    Route("sensor-logger", "sensor-logger", "sensor_logger", "readings"),
    Route("seed-image", "Image", "seed_image", "readings"),
]
FIELDS = {"device_id": "dev-1", "sensor": "temp"}
EXAMPLES = hypothesis_settings(max_examples=150, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(["ts", "value", "unit", "seq", "sensorId", "image", "collectedAt",
                        "deviceId", "messageId", "sessionId", "payload", "name", "time",
                        "values", "accuracy", "x", "lux"])
shaped = st.recursive(
    scalars | st.integers(min_value=1698501144401773000, max_value=1798501144401773000)
    | st.sampled_from(["2024-05-01 12:00:00", "2024-05-01T12:00:00Z", "17", "light"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children,
                                                                      max_size=6),
    max_leaves=25,
)


def to_json(document: object) -> bytes:
    # The stdlib writes any integer, as a device might; orjson stops at 64 bits.
    return json.dumps(document).encode()


def outcome(route: Route, payload: bytes) -> list[Reading] | str:
    try:
        readings = decode(route, FIELDS, "t", payload, qos=1, received_at_ns=RECEIVED_NS,
                          max_payload_bytes=2048)
    except DecodeError as exc:
        assert exc.reason in DECODE_REASONS
        return exc.reason
    for reading in readings:
        assert reading.value is not None or reading.values
        assert reading.value is None or math.isfinite(reading.value)
        assert all(math.isfinite(v) for v in (reading.values or {}).values())
        assert Reading.from_json(reading.to_json()).ts_ns == reading.ts_ns
    return readings


@EXAMPLES
@given(st.sampled_from(ROUTES), st.binary(max_size=300))
def test_any_bytes(route: Route, payload: bytes) -> None:
    outcome(route, payload)


@EXAMPLES
@given(st.sampled_from(ROUTES), json_like)
def test_any_json(route: Route, document: object) -> None:
    outcome(route, to_json(document))


@EXAMPLES
@given(st.sampled_from(ROUTES), shaped)
def test_json_shaped_like_the_formats(route: Route, document: object) -> None:
    outcome(route, to_json(document))


@EXAMPLES
@given(st.lists(st.dictionaries(keys, shaped, max_size=5), max_size=5))
def test_sensor_logger_batches_of_any_entries(entries: list[object]) -> None:
    batch = {"messageId": 1, "sessionId": "s", "deviceId": "d", "payload": entries}
    outcome(ROUTES[1], to_json(batch))
