"""Pure checks of the shared event schema and settings."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.errors import ConfigError, SchemaError
from contracts.events import (
    Reading,
    Source,
    check_id,
    check_number,
    datetime_to_ns,
    make_event_id,
    ns_to_datetime,
    ns_to_iso,
)
from contracts.settings import Settings, get_settings

BIG_NS = 1_700_000_000_123_456_789  # above 2**53: a float would round it


def test_reading_round_trips_exact_nanoseconds() -> None:
    reading = Reading(make_event_id("dev-1", "accel", BIG_NS), "dev-1", "accel", BIG_NS,
                      values={"x": 1.0, "y": -2.5, "z": 0.25}, seq=7,
                      source=Source("sensors/dev-1/accel", "json_reading", 1),
                      received_at_ns=BIG_NS + 5)
    back = Reading.from_json(reading.to_json())
    assert back == reading
    assert back.ts_ns == BIG_NS
    doc = reading.to_document()
    assert doc["_id"] == reading.event_id and "event_id" not in doc
    assert doc["ts"] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert doc["ts_ns"] == BIG_NS
    assert reading.magnitude() == pytest.approx((1 + 6.25 + 0.0625) ** 0.5)


def test_event_id_is_stable_and_content_derived() -> None:
    assert make_event_id("d", "s", 1) == make_event_id("d", "s", 1)
    assert make_event_id("d", "s", 1) != make_event_id("d", "s", 2)
    assert make_event_id("d", "s", 1) != make_event_id("d", "s", 1, 17.0)


def test_datetime_conversions_are_integer_exact() -> None:
    ns = 1_700_000_000_123_000_000
    assert datetime_to_ns(ns_to_datetime(ns)) == ns
    assert ns_to_datetime(1_000_000).microsecond == 1000


@pytest.mark.parametrize("ts_ns", [0, 1, -1, 999_999, 1_000_000, -1_000_001, BIG_NS,
                                   253_402_300_799_999_999_999, -62_135_596_800 * 10**9])
def test_ns_to_iso_matches_the_datetime_text(ts_ns: int) -> None:
    # The cached-second formatting must give exactly what datetime.isoformat
    # gives, truncating (not rounding) to milliseconds, on both sides of 1970.
    text = ns_to_datetime(ts_ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert ns_to_iso(ts_ns) == text
    assert ns_to_iso(BIG_NS) == "2023-11-14T22:13:20.123Z"


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "$where", "x" * 129, "tab\there", 5,
                                 {"$gt": ""}, None])
def test_check_id_refuses_unsafe_values(bad: object) -> None:
    with pytest.raises(SchemaError):
        check_id("device_id", bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "1.0", None])
def test_check_number_refuses_non_finite_and_non_numbers(bad: object) -> None:
    with pytest.raises(SchemaError):
        check_number("value", bad)


def test_from_json_rejects_non_readings() -> None:
    for payload in (b"not json", b"[1,2]", b'{"event_id": "x"}'):
        with pytest.raises(SchemaError):
            Reading.from_json(payload)


def test_production_refuses_shipped_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPIPE_ENV", "production")
    with pytest.raises(ValueError, match="MQTT_PASSWORD"):
        Settings()
    get_settings.cache_clear()
    with pytest.raises(ConfigError):
        get_settings()
    get_settings.cache_clear()
    monkeypatch.setenv("MQTT_PASSWORD", "a-real-secret")
    monkeypatch.setenv("MONGO_EXPRESS_PASSWORD", "another-real-secret")
    monkeypatch.setenv("API_INGEST_TOKEN", "a-real-token")
    assert Settings().edgepipe_env == "production"


def test_production_refuses_shipped_read_token_and_mongo_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPIPE_ENV", "production")
    monkeypatch.setenv("MQTT_PASSWORD", "a-real-secret")
    monkeypatch.setenv("MONGO_EXPRESS_PASSWORD", "another-real-secret")
    monkeypatch.setenv("API_INGEST_TOKEN", "a-real-token")
    monkeypatch.setenv("API_READ_TOKEN", "edgepipe-local")
    with pytest.raises(ValueError, match="API_READ_TOKEN"):
        Settings()
    monkeypatch.setenv("API_READ_TOKEN", "")  # empty: reads open, a choice
    monkeypatch.setenv("MONGO_URL", "mongodb://root:edgepipe-local@mongo:27017/?authSource=admin")
    with pytest.raises(ValueError, match="MONGO_URL"):
        Settings()
    monkeypatch.setenv("MONGO_URL", "mongodb://root:s3cr%3At@mongo:27017/?authSource=admin")
    assert Settings().api_read_token.get_secret_value() == ""


def test_mqtt_password_file_overrides_the_password(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "bridge.password"
    secret.write_text("generated-secret\n")
    monkeypatch.setenv("MQTT_PASSWORD_FILE", str(secret))
    assert Settings().mqtt_password.get_secret_value() == "generated-secret"
    monkeypatch.setenv("MQTT_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="MQTT_PASSWORD_FILE"):
        Settings()
    # In production the generated password is what counts, not the shipped MQTT_PASSWORD.
    monkeypatch.setenv("MQTT_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("EDGEPIPE_ENV", "production")
    monkeypatch.setenv("MONGO_EXPRESS_PASSWORD", "another-real-secret")
    monkeypatch.setenv("API_INGEST_TOKEN", "a-real-token")
    assert Settings().mqtt_username == "edgepipe"
