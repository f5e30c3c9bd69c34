"""Pure steps: time parsing, cursors, the metrics body and the cover plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.metrics_logic import (
    MetricsRequestError,
    parse_metrics_request,
    plan_cover,
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


def _covered(start: int, end: int, sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    plan = plan_cover(start, end, sizes)
    spans = list(plan.raw)
    for w in plan.windows:
        spans.append((w.first_start_ns, w.end_start_ns))
        assert w.first_start_ns % (w.size_s * NS_PER_S) == 0
        assert w.end_start_ns % (w.size_s * NS_PER_S) == 0
    return sorted(spans)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(-1, 10**6),
       st.integers(-1, 10**6))
def test_cover_tiles_the_range_exactly_and_respects_watermarks(a: int, length: int, wm_h: int,
                                                               wm_m: int) -> None:
    start, end = (T0 + a * 10**7), (T0 + (a + length) * 10**7)
    sizes = [(3600, T0 + wm_h * 10**7), (60, T0 + wm_m * 10**7), (10, 2**62)]
    spans = _covered(start, end, sizes)
    position = start
    for lo, hi in spans:
        assert lo == position and lo < hi
        position = hi
    assert position == end or start == end
    for w in plan_cover(start, end, sizes).windows:
        watermark = dict(sizes)[w.size_s]
        assert w.end_start_ns <= watermark


def test_cover_of_a_day_needs_few_pieces() -> None:
    plan = plan_cover(T0 + 1234567, T0 + 86_400 * NS_PER_S + 98765, [
        (3600, 2**62), (60, 2**62), (10, 2**62)])
    assert len(plan.windows) <= 5 and len(plan.raw) == 2
    assert all(hi - lo < 10 * NS_PER_S for lo, hi in plan.raw)


def test_reading_value_follows_stream_analytics_fields() -> None:
    vector = {"value": None, "values": {"x": 3.0, "y": 4.0}}
    assert reading_value(vector, None) == 5.0
    assert reading_value(vector, "x") == 3.0
    assert reading_value(vector, "value") is None
    assert reading_value({"value": 2.5, "values": None}, None) == 2.5
    assert reading_value({"value": 2.5, "values": {"lux": 2.5, "ir": 1.0}}, None) == 2.5


def test_iso_output_of_the_test_epoch() -> None:
    assert ns_to_iso(T0) == "2025-11-22T03:00:00.000Z"
