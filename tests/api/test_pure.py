"""Pure steps: time parsing, cursors, the metrics body and the cover plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.metrics_logic import (
    MetricsRequestError,
    parse_metrics_request,
    reading_value,
)
from api.pagination import decode_cursor, encode_cursor
from api.timeparse import parse_range, parse_time
from contracts.errors import SchemaError
from contracts.events import NS_PER_S, ns_to_datetime, ns_to_iso

T0 = 1_763_780_400 * NS_PER_S  # 2025-11-22 03:00:00 UTC


@pytest.mark.parametrize("text", [
    "2025-11-22 03:00:00", "2025-11-22T03:00:00Z", "2025-11-22T05:00:00+02:00",
    "2025-11-22T03:00:00", 1_763_780_400, "1763780400", 1_763_780_400_000,
    1_763_780_400_000_000, str(T0), T0, 1_763_780_400.0])
def test_every_time_form_is_the_same_instant(text: object) -> None:
    assert parse_time("from", text) == T0


def test_fractions_and_nanoseconds_are_kept() -> None:
    assert parse_time("t", "2025-11-22T03:00:00.123Z") == T0 + 123_000_000
    assert parse_time("t", str(T0 + 7)) == T0 + 7
    assert parse_time("t", 1_763_780_400.5) == T0 + NS_PER_S // 2


@pytest.mark.parametrize("bad", ["yesterday", "2025-13-01 00:00:00", "", None, True, [1], {}])
def test_malformed_times_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(SchemaError, match="from"):
        parse_time("from", bad)


def test_reversed_and_too_long_ranges_are_refused() -> None:
    with pytest.raises(SchemaError, match="must not be after"):
        parse_range("2025-11-22 03:00:00", "2025-11-22 02:00:00", max_days=1)
    with pytest.raises(SchemaError, match="longer than 1 days"):
        parse_range("2025-11-20 00:00:00", "2025-11-22 00:00:00", max_days=1)
    assert parse_range(T0, T0, max_days=1) == (T0, T0)


@given(st.integers(0, 2**45), st.text(min_size=1, max_size=40))
def test_cursor_round_trips(ms: int, doc_id: str) -> None:
    moment = ns_to_datetime(ms * 1_000_000)
    assert decode_cursor(encode_cursor(moment, doc_id)) == (moment, doc_id)


@pytest.mark.parametrize("bad", ["", "!!!", "bm90IGpzb24", "WzEsMl0"])
def test_foreign_cursors_are_refused(bad: str) -> None:
    with pytest.raises(SchemaError, match="cursor"):
        decode_cursor(bad)


def test_metrics_body_collects_seed_errors_and_keeps_valid_parts() -> None:
    request = parse_metrics_request({
        "Image": ["count", "min", "median", "count"], "temp": ["std"], "colour": "red",
        "$where": ["count"], "from": "2025-11-22 03:00:00", "to": "2025-11-22 04:00:00",
    }, max_days=366)
    assert request.sensors == {"Image": ["count", "min"], "temp": ["std"]}
    assert request.errors == ["Unexpected metric median to compute for the sensor Image",
                              "Unexpected key colour in the request body",
                              "Unexpected key $where in the request body"]
    assert (request.start_ns, request.end_ns) == (T0, T0 + 3600 * NS_PER_S)


@pytest.mark.parametrize(("body", "message"), [
    ([], "JSON object"),
    ({"Image": ["count"]}, "missing 'from' and 'to'"),
    ({"Image": ["count"], "from": "2025-11-22 03:00:00"}, "missing 'to'"),
    ({"Image": ["count"], "from": "soon", "to": "later"}, "'from' is not a time"),
    ({"Image": ["count"], "from": "2025-11-22 04:00:00", "to": "2025-11-22 03:00:00"},
     "must not be after"),
    ({"Image": ["count"], "from": 0, "to": 1, "device_id": {"$gt": ""}}, "device_id must be"),
])
def test_unanswerable_bodies_raise(body: object, message: str) -> None:
    with pytest.raises(MetricsRequestError, match=message):
        parse_metrics_request(body, max_days=366)


def test_reading_value_follows_stream_analytics_fields() -> None:
    vector = {"value": None, "values": {"x": 3.0, "y": 4.0}}
    assert reading_value(vector, None) == 5.0
    assert reading_value(vector, "x") == 3.0
    assert reading_value(vector, "value") is None
    assert reading_value({"value": 2.5, "values": None}, None) == 2.5
    assert reading_value({"value": 2.5, "values": {"lux": 2.5, "ir": 1.0}}, None) == 2.5


def test_iso_output_of_the_test_epoch() -> None:
    assert ns_to_iso(T0) == "2025-11-22T03:00:00.000Z"
