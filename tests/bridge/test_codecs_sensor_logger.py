"""The Sensor Logger batch: every sensor kind the app sends, exact ns times,
the test push, and the rules for odd entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import MongoClient

from bridge.codecs import DECODE_REASONS, decode
from bridge.routes import Route
from contracts.errors import DecodeError
from contracts.events import Reading, Source, make_event_id
from contracts.settings import Settings

DATA = Path(__file__).resolve().parent.parent / "data"
LOGGER = Route("sensor-logger", "sensor-logger", "sensor_logger", "readings")
RECEIVED_NS = 1698501150000000000
DEVICE = "3f9a2b7c-61d4-4e8a-b0c5-7d2e9f1a4b6c"


def batch_document() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads((DATA / "sensor_logger_batch.json").read_bytes())
    return document


def run(payload: bytes | dict[str, Any]) -> list[Reading]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode(LOGGER, {}, "sensor-logger", body, qos=0, received_at_ns=RECEIVED_NS,
                  max_payload_bytes=256 * 1024)


def reason_of(payload: bytes | dict[str, Any]) -> str:
    with pytest.raises(DecodeError) as error:
        run(payload)
    assert error.value.reason in DECODE_REASONS
    return error.value.reason


def by_sensor() -> dict[str, Reading]:
    return {r.sensor: r for r in run((DATA / "sensor_logger_batch.json").read_bytes())}


def test_every_sensor_kind_becomes_one_reading() -> None:
    readings = by_sensor()
    assert sorted(readings) == sorted([
        "accelerometer", "accelerometeruncalibrated", "totalacceleration", "gravity",
        "gyroscope", "gyroscopeuncalibrated", "magnetometer", "magnetometeruncalibrated",
        "orientation", "barometer", "location", "microphone", "light", "battery"])
    for r in readings.values():
        assert r.device_id == DEVICE
        assert r.seq == 42
        assert r.source == Source("sensor-logger", "sensor_logger", 0)
        assert r.event_id == make_event_id(DEVICE, r.sensor, r.ts_ns)


def test_multi_axis_sensors_fill_values() -> None:
    readings = by_sensor()
    for name in ("accelerometer", "accelerometeruncalibrated", "gravity", "gyroscope",
                 "magnetometer", "totalacceleration"):
        assert readings[name].value is None
        assert set(readings[name].values or {}) == {"x", "y", "z"}, name
    assert set(readings["gyroscopeuncalibrated"].values or {}) == {
        "x", "y", "z", "xBias", "yBias", "zBias"}
    assert set(readings["magnetometeruncalibrated"].values or {}) == {
        "x", "y", "z", "xBias", "yBias", "zBias"}
    assert set(readings["orientation"].values or {}) == {
        "qx", "qy", "qz", "qw", "roll", "pitch", "yaw"}
    location = readings["location"].values or {}
    assert (location["latitude"], location["longitude"]) == (51.5074, -0.1278)
    assert readings["accelerometer"].unit == "m/s^2"
    assert readings["magnetometer"].unit == "uT"


def test_scalar_sensors_fill_value() -> None:
    readings = by_sensor()
    assert (readings["light"].value, readings["light"].values, readings["light"].unit) == (
        312.5, None, "lx")
    assert (readings["microphone"].value, readings["microphone"].values) == (-47.63, None)
    # Barometer: pressure is the value; relativeAltitude is kept beside it.
    assert readings["barometer"].value == 1013.2567
    assert readings["barometer"].values == {"relativeAltitude": 0.1234, "pressure": 1013.2567}
    # Battery: the level is the value; batteryState (text) and lowPowerMode (bool) are left out.
    assert (readings["battery"].value, readings["battery"].values) == (0.87, None)


def test_nanosecond_times_above_2_pow_53_stay_exact() -> None:
    accelerometer = by_sensor()["accelerometer"]
    assert accelerometer.ts_ns == 1698501144401773123
    assert accelerometer.ts_ns > 2**53
    assert float(accelerometer.ts_ns) != accelerometer.ts_ns  # a float would have rounded
    assert Reading.from_json(accelerometer.to_json()).ts_ns == 1698501144401773123


def test_time_as_digit_text_is_exact_and_float_is_refused() -> None:
    document = batch_document()
    document["payload"] = [{"name": "light", "time": "1698501144401773123",
                            "values": {"lux": 1}}]
    assert run(document)[0].ts_ns == 1698501144401773123
    float_time = (b'{"deviceId": "d", "payload": [{"name": "light", '
                  b'"time": 1.6985011444017731e18, "values": {"lux": 1}}]}')
    assert reason_of(float_time) == "wrong_type"


def test_the_same_batch_twice_gives_the_same_event_ids() -> None:
    first = [r.event_id for r in run(batch_document())]
    assert first == [r.event_id for r in run(batch_document())]
    assert len(set(first)) == len(first)


def test_test_push_and_empty_batches_yield_nothing() -> None:
    assert run((DATA / "sensor_logger_test_push.json").read_bytes()) == []
    assert run({"messageId": 0, "sessionId": "s", "deviceId": "d", "payload": []}) == []
    assert run({"payload": []}) == []
    assert run(b"") == []


def test_entries_without_numbers_are_skipped_the_rest_kept() -> None:
    document = batch_document()
    document["payload"] = [
        {"name": "accelerometer", "time": 1698501144401773000, "values": []},
        {"name": "accelerometer", "time": 1698501144401773000, "values": {}},
        {"name": "activity", "time": 1698501144401773000,
         "values": {"activity": "walking", "confidence": "high"}},
        {"name": "camera", "time": 1698501144401773000,
         "values": {"image": "/9j/4AAQSkZJRg==", "imageFormat": "jpg"}},
        {"name": "light", "time": 1698501144401773000, "values": {"lux": 5}},
    ]
    assert [(r.sensor, r.value) for r in run(document)] == [("light", 5.0)]


def test_unknown_sensors_are_generic_readings() -> None:
    document = batch_document()
    document["payload"] = [
        {"name": "thermometer", "time": 1698501144401773000, "values": {"celsius": 21.5}},
        {"name": "airquality", "time": 1698501144401773000, "values": {"pm25": 4, "pm10": 9}},
    ]
    readings = {r.sensor: r for r in run(document)}
    assert (readings["thermometer"].value, readings["thermometer"].unit) == (21.5, None)
    assert readings["airquality"].values == {"pm25": 4.0, "pm10": 9.0}


def test_fields_beside_name_and_time_are_read_too() -> None:
    document = batch_document()
    document["payload"] = [{"name": "gyroscope", "time": 1698501144401773000,
                            "x": 0.1, "y": 0.2, "z": 0.3, "accuracy": 3}]
    assert run(document)[0].values == {"x": 0.1, "y": 0.2, "z": 0.3}


def entry_batch(entry: Any, **batch: Any) -> dict[str, Any]:
    return {"messageId": 1, "sessionId": "s", "deviceId": "d", "payload": [entry], **batch}


LIGHT = {"name": "light", "time": 1698501144401773000, "values": {"lux": 5}}


@pytest.mark.parametrize(("document", "reason"), [
    ({"deviceId": "d"}, "missing_field"),
    ({"deviceId": "d", "payload": {}}, "wrong_type"),
    ({"payload": [LIGHT]}, "missing_field"),
    (entry_batch(LIGHT, deviceId="a/b"), "bad_id"),
    (entry_batch(LIGHT, deviceId=12), "wrong_type"),
    (entry_batch(LIGHT, messageId="1"), "wrong_type"),
    (entry_batch(LIGHT, sessionId=5), "wrong_type"),
    (entry_batch({**LIGHT, "time": None}), "missing_field"),
    (entry_batch({**LIGHT, "time": "yesterday"}), "wrong_type"),
    (entry_batch({**LIGHT, "time": 1698501144401}), "ts_out_of_range"),  # ms, not ns
    (entry_batch({**LIGHT, "time": -1}), "ts_out_of_range"),
    (entry_batch({**LIGHT, "name": None}), "missing_field"),
    (entry_batch({**LIGHT, "name": "$bad"}), "bad_id"),
    (entry_batch({**LIGHT, "values": [1, 2, 3]}), "wrong_type"),
    (entry_batch({**LIGHT, "values": {"a.b": 1}}), "bad_id"),
    (entry_batch({**LIGHT, "accuracy": "high"}), "wrong_type"),
    (entry_batch("light"), "not_object"),
    ([LIGHT], "not_object"),
])
def test_bad_batches_are_rejected_whole(document: Any, reason: str) -> None:
    assert reason_of(orjson.dumps(document)) == reason


def test_one_bad_entry_rejects_the_message_with_its_index() -> None:
    document = batch_document()
    document["payload"].append({"name": "light", "time": 1698501144401773000,
                                "values": {"lux": True, "extra": "1e999"}})
    document["payload"].append({"name": "light", "time": 1698501144401773000,
                                "values": {"lux": [1]}})
    with pytest.raises(DecodeError) as error:
        run(document)
    assert error.value.reason == "wrong_type"
    assert "light.lux" in str(error.value)


def test_every_sensor_kind_is_stored_by_the_mongodb_wire_server(
        mongo: MongoClient[dict[str, Any]], settings: Settings) -> None:
    readings = run(batch_document())
    collection = mongo[settings.mongo_db]["readings"]
    collection.insert_many([r.to_document() for r in readings], ordered=False)
    stored = {doc["sensor"]: doc for doc in collection.find({})}
    assert len(stored) == len(readings) == 14
    assert stored["accelerometer"]["ts_ns"] == 1698501144401773123  # int64 exact in BSON
    assert stored["barometer"]["values"]["relativeAltitude"] == 0.1234
    assert stored["battery"]["value"] == 0.87
