"""The JSON reading and the seed pipeline's Image format, and every bad-input
class with its reason."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from bridge.codecs import DECODE_REASONS, decode
from bridge.routes import Route
from contracts.errors import DecodeError
from contracts.events import NS_PER_S, Reading, Source, datetime_to_ns, make_event_id

DATA = Path(__file__).resolve().parent.parent / "data"
SEED_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "seed_demo_data.csv"
NOW_NS = datetime_to_ns(datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC))
MAY_1_NOON_NS = datetime_to_ns(datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
LIMIT = 4096

SENSORS = Route("sensors", "sensors/{device_id}/{sensor}", "json_reading", "readings")
IMAGE = Route("seed-image", "Image", "seed_image", "readings")


def reading(payload: bytes | Mapping[str, object], device: str = "dev-1", sensor: str = "temp",
            qos: int = 1) -> Reading:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    topic = f"sensors/{device}/{sensor}"
    readings = decode(SENSORS, {"device_id": device, "sensor": sensor}, topic, body, qos=qos,
                      received_at_ns=NOW_NS, max_payload_bytes=LIMIT)
    assert len(readings) == 1
    return readings[0]


def reason_of(route: Route, payload: bytes, fields: dict[str, str] | None = None) -> str:
    fields = {"device_id": "dev-1", "sensor": "temp"} if fields is None else fields
    with pytest.raises(DecodeError) as error:
        decode(route, fields, "topic", payload, qos=1, received_at_ns=NOW_NS,
               max_payload_bytes=LIMIT)
    assert error.value.reason in DECODE_REASONS
    assert str(error.value)  # a human message
    return error.value.reason


@pytest.mark.parametrize(("ts", "expected_ns"), [
    ("2024-05-01T12:00:00Z", MAY_1_NOON_NS),
    ("2024-05-01T12:00:00.123+00:00", MAY_1_NOON_NS + 123_000_000),
    ("2024-05-01T14:00:00+02:00", MAY_1_NOON_NS),
    ("2024-05-01 12:00:00", MAY_1_NOON_NS),  # no offset: UTC
    ("2024-05-01T12:00:00.123456789Z", MAY_1_NOON_NS + 123_456_789),
    (1714564800, MAY_1_NOON_NS),  # seconds
    (1714564800.25, MAY_1_NOON_NS + 250_000_000),
    (1714564800123, MAY_1_NOON_NS + 123_000_000),  # milliseconds
    (1714564800123456, MAY_1_NOON_NS + 123_456_000),  # microseconds
    (1714564800123456789, MAY_1_NOON_NS + 123_456_789),  # nanoseconds, above 2**53
    ("1714564800123", MAY_1_NOON_NS + 123_000_000),  # epoch digits as text
])
def test_json_reading_timestamp_forms(ts: object, expected_ns: int) -> None:
    assert reading({"ts": ts, "value": 1.5}).ts_ns == expected_ns


def test_json_reading_fields() -> None:
    r = reading({"ts": "2024-05-01T12:00:00Z", "value": 21, "unit": "degC", "seq": 7,
                 "extra": "ignored"}, qos=0)
    assert (r.device_id, r.sensor, r.value, r.values, r.unit, r.seq) == (
        "dev-1", "temp", 21.0, None, "degC", 7)
    assert isinstance(r.value, float)
    assert r.source == Source("sensors/dev-1/temp", "json_reading", 0)
    assert r.received_at_ns == NOW_NS
    assert r.event_id == make_event_id("dev-1", "temp", MAY_1_NOON_NS)


def test_json_reading_axes() -> None:
    r = reading({"ts": 1714564800, "value": {"x": 1, "y": -2.5, "z": 9.81}})
    assert r.value is None
    assert r.values == {"x": 1.0, "y": -2.5, "z": 9.81}


def test_axes_may_come_as_values_too() -> None:
    r = reading({"ts": 1714564800, "values": {"x": 1, "y": 2}})
    assert (r.value, r.values) == (None, {"x": 1.0, "y": 2.0})
    both = reading({"ts": 1714564800, "value": 3, "values": {"x": 1}})
    assert (both.value, both.values) == (3.0, {"x": 1.0})
    assert reason_of(SENSORS, b'{"ts": 1714564800, "value": {"x": 1}, "values": {"y": 2}}') \
        == "wrong_type"
    assert reason_of(SENSORS, b'{"ts": 1714564800, "values": 5}') == "wrong_type"


def test_sample_readings_file_decodes() -> None:
    lines = (DATA / "json_readings.jsonl").read_bytes().splitlines()
    readings = [reading(line) for line in lines]
    assert len({r.event_id for r in readings}) == len(lines)


def test_same_reading_twice_has_the_same_event_id() -> None:
    body = {"ts": 1714564800123, "value": 3.0}
    assert reading(body).event_id == reading(body).event_id
    assert reading(body).event_id != reading(body, device="dev-2").event_id
    assert reading(body).event_id != reading({"ts": 1714564800124, "value": 3.0}).event_id


def seed_values() -> list[str]:
    with SEED_CSV.open(encoding="utf-8-sig", newline="") as handle:
        return [row["Image"] for row in csv.DictReader(handle)]


def image(value: object, collected_at: str = "2024-05-01 12:00:00",
          sensor_id: object = "camera-1") -> bytes:
    return orjson.dumps({"sensorId": sensor_id, "image": value, "collectedAt": collected_at})


def test_seed_demo_csv_values_decode_as_image_messages() -> None:
    values = seed_values()
    assert values == [str(n) for n in range(1, 39)]
    readings = [r for v in values for r in decode(
        IMAGE, {}, "Image", image(v), qos=1, received_at_ns=NOW_NS, max_payload_bytes=LIMIT)]
    assert [r.value for r in readings] == [float(n) for n in range(1, 39)]
    assert {(r.device_id, r.sensor, r.ts_ns) for r in readings} == {
        ("camera-1", "image", MAY_1_NOON_NS)}
    # Same second, different values: still 38 distinct readings.
    assert len({r.event_id for r in readings}) == 38
    again = decode(IMAGE, {}, "Image", image("17"), qos=1, received_at_ns=NOW_NS + 1,
                   max_payload_bytes=LIMIT)
    assert again[0].event_id == readings[16].event_id


@pytest.mark.parametrize(("payload", "reason"), [
    (image("abc"), "wrong_type"),
    (image("1_000"), "wrong_type"),
    (image("nan"), "not_finite"),
    (image("inf"), "not_finite"),
    (image(True), "wrong_type"),
    (image("5", "yesterday"), "bad_timestamp"),
    (image("5", "1999-12-31 23:59:59"), "ts_out_of_range"),
    (image("5", sensor_id="a/b"), "bad_id"),
    (image("5", sensor_id=7), "wrong_type"),
    (b'{"image": "5", "collectedAt": "2024-05-01 12:00:00"}', "missing_field"),
    (b'["Image"]', "not_object"),
])
def test_seed_image_bad_input(payload: bytes, reason: str) -> None:
    assert reason_of(IMAGE, payload) == reason


def test_seed_image_accepts_a_json_number() -> None:
    r = decode(IMAGE, {}, "Image", image(2.5), qos=1, received_at_ns=NOW_NS,
               max_payload_bytes=LIMIT)
    assert r[0].value == 2.5


GOOD_TS = b'"ts": 1714564800'
BAD_READINGS = {
    "too_large": b'{"ts": 1714564800, "value": 1, "pad": "' + b"x" * LIMIT + b'"}',
    "not_utf8": b'{"ts": 1714564800, "value": 1, "unit": "\xff\xfe"}',
    "not_json": b"temperature=21.5",
    "empty": b"",
    "too_deep": b'{"ts": 1714564800, "value": 1, "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    "too_deep_for_orjson": b"[" * 2000 + b"]" * 2000,
    "not_object": b"[1, 2, 3]",
    "missing_value": b'{' + GOOD_TS + b'}',
    "missing_ts": b'{"value": 1}',
    "null_value": b'{' + GOOD_TS + b', "value": null}',
    "string_value": b'{' + GOOD_TS + b', "value": "21.5"}',
    "bool_value": b'{' + GOOD_TS + b', "value": true}',
    "empty_axes": b'{' + GOOD_TS + b', "value": {}}',
    "string_axis": b'{' + GOOD_TS + b', "value": {"x": "1"}}',
    "nan_literal": b'{' + GOOD_TS + b', "value": NaN}',
    "infinity_literal": b'{' + GOOD_TS + b', "value": -Infinity}',
    "overflow": b'{' + GOOD_TS + b', "value": 1e400}',
    "bad_iso": b'{"ts": "yesterday", "value": 1}',
    "bool_ts": b'{"ts": true, "value": 1}',
    "ts_1970": b'{"ts": 5, "value": 1}',
    "ts_future": b'{"ts": 1900000000, "value": 1}',
    "ms_as_float_year_1999": b'{"ts": 915148800000.0, "value": 1}',
    "unit_not_string": b'{' + GOOD_TS + b', "value": 1, "unit": 5}',
    "seq_float": b'{' + GOOD_TS + b', "value": 1, "seq": 1.5}',
    "seq_beyond_int64": b'{' + GOOD_TS + b', "value": 1, "seq": 18446744073709551615}',
    "dollar_axis": b'{' + GOOD_TS + b', "value": {"$gt": 1}}',
    "dotted_axis": b'{' + GOOD_TS + b', "value": {"a.b": 1}}',
}
EXPECTED_REASON = {
    "too_large": "too_large", "not_utf8": "not_utf8", "not_json": "not_json",
    "empty": "not_json", "too_deep": "too_deep", "too_deep_for_orjson": "too_deep",
    "not_object": "not_object", "missing_value": "missing_field",
    "missing_ts": "missing_field", "null_value": "missing_field",
    "string_value": "wrong_type", "bool_value": "wrong_type", "empty_axes": "wrong_type",
    "string_axis": "wrong_type", "nan_literal": "not_finite", "infinity_literal": "not_finite",
    "overflow": "not_finite", "bad_iso": "bad_timestamp", "bool_ts": "wrong_type",
    "ts_1970": "ts_out_of_range", "ts_future": "ts_out_of_range",
    "ms_as_float_year_1999": "ts_out_of_range", "unit_not_string": "wrong_type",
    "seq_float": "wrong_type", "seq_beyond_int64": "wrong_type", "dollar_axis": "bad_id",
    "dotted_axis": "bad_id",
}


@pytest.mark.parametrize("case", sorted(BAD_READINGS))
def test_json_reading_bad_input(case: str) -> None:
    assert reason_of(SENSORS, BAD_READINGS[case]) == EXPECTED_REASON[case]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"device_id": "$SYS", "sensor": "t"}, "bad_id"),
    ({"device_id": "", "sensor": "t"}, "bad_id"),
    ({"device_id": "d", "sensor": "x" * 200}, "bad_id"),
])
def test_ids_from_the_topic_are_checked(fields: dict[str, str], reason: str) -> None:
    assert reason_of(SENSORS, b'{"ts": 1714564800, "value": 1}', fields) == reason


def test_dots_are_fine_in_ids_but_not_in_axis_names() -> None:
    assert reading({"ts": 1714564800, "value": 1}, device="plant.line-2").device_id == \
        "plant.line-2"
    assert reason_of(SENSORS, b'{"ts": 1714564800, "value": {"a.b": 1}}') == "bad_id"


def test_size_is_checked_before_parsing() -> None:
    # Not JSON at all, yet the size is what is reported.
    assert reason_of(SENSORS, b"\xff" * (LIMIT + 1)) == "too_large"


def test_a_byte_order_mark_is_tolerated() -> None:
    assert reading(b'\xef\xbb\xbf{"ts": 1714564800, "value": 1}').value == 1.0


def test_future_bound_is_one_day_after_arrival() -> None:
    day = 86_400 * NS_PER_S
    assert reading({"ts": NOW_NS + day, "value": 1}).ts_ns == NOW_NS + day
    assert reason_of(SENSORS, orjson.dumps({"ts": NOW_NS + day + 1, "value": 1})) == \
        "ts_out_of_range"
