"""`POST /compute/metrics` on the real MongoDB-wire server: the seed contract
case by case, and equality with a direct computation over the raw readings."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.main import create_app
from contracts.events import NS_PER_S, ns_to_iso

from .conftest import Store, make_reading, stats_for, wait_ready, windows_for

T0 = 1_763_769_600 * NS_PER_S  # 2025-11-22 00:00:00 UTC
DAY = "2025-11-22"


def direct(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "min": None, "max": None, "average": None, "sum": None, "std": None}
    mean = math.fsum(values) / len(values)
    return {"count": len(values), "min": min(values), "max": max(values), "average": mean,
            "sum": math.fsum(values),
            "std": math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))}


def assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    for metric, expected in want.items():
        if expected is None or metric in ("count", "min", "max"):
            assert got[metric] == expected, metric
        else:
            assert got[metric] == pytest.approx(expected, rel=1e-9, abs=1e-9), metric


@pytest.fixture
def seeded(store: Store) -> list[Any]:
    """Two devices, a scalar and a vector sensor, readings every 7.3 s over 3 h,
    windows closed up to 2 h 30 (the last half hour only in raw readings)."""
    rng = random.Random(7)
    readings = []
    for device in ("dev-a", "dev-b"):
        for i in range(1480):
            ts = T0 + int(i * 7.3 * NS_PER_S) + rng.randrange(NS_PER_S)
            readings.append(make_reading(device, "temp", ts, value=rng.gauss(20, 3)))
            readings.append(make_reading(device, "acc", ts, values={
                "x": rng.gauss(0, 1), "y": rng.gauss(9.8, 1), "z": rng.gauss(0, 1)}))
    store.readings(readings, closed_before_ns=T0 + 9000 * NS_PER_S, stats=True)
    return readings


def values_of(readings: list[Any], sensor: str, start: int, end: int,
              device: str | None = None, field: str | None = None) -> list[float]:
    found = []
    for r in readings:
        if r.sensor != sensor or not start <= r.ts_ns < end:
            continue
        if device is not None and r.device_id != device:
            continue
        if field is None:
            found.append(r.value if r.value is not None else r.magnitude())
        else:
            found.append(r.values[field])
    return found


def test_seed_shaped_request_matches_direct_computation(client: TestClient,
                                                        seeded: list[Any]) -> None:
    body = {"temp": ["count", "min", "max", "average", "sum", "std"],
            "from": f"{DAY} 00:13:27", "to": f"{DAY} 02:51:03"}
    response = client.post("/compute/metrics", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["errors"] == []
    want = direct(values_of(seeded, "temp", T0 + 807 * NS_PER_S, T0 + 10263 * NS_PER_S))
    assert want["count"] > 2000
    assert_close(response.json()["result"]["temp"], want)


def test_device_filter_axes_and_magnitude(client: TestClient, seeded: list[Any]) -> None:
    start, end = T0 + 95 * NS_PER_S + 123, T0 + 7300 * NS_PER_S
    body = {"acc": ["count", "mean", "std"], "acc.y": ["count", "min", "max", "mean"],
            "device_id": "dev-b", "from": ns_to_iso(start), "to": str(end)}
    result = client.post("/compute/metrics", json=body).json()["result"]
    start_ms = start - start % 1_000_000  # ISO output keeps milliseconds
    mag = direct(values_of(seeded, "acc", start_ms, end, "dev-b"))
    axis = direct(values_of(seeded, "acc", start_ms, end, "dev-b", "y"))
    assert_close(result["acc"], {k: mag[k] for k in ("count", "std")} | {"mean": mag["average"]})
    assert_close(result["acc.y"], {k: axis[k] for k in ("count", "min", "max")}
                 | {"mean": axis["average"]})


def test_unknown_metric_and_key_are_reported_with_200(client: TestClient,
                                                      seeded: list[Any]) -> None:
    body = {"temp": ["count", "median"], "colour": "blue", "from": f"{DAY} 00:00:00",
            "to": f"{DAY} 00:10:00"}
    response = client.post("/compute/metrics", json=body)
    assert response.status_code == 200
    assert response.json()["errors"] == [
        "Unexpected metric median to compute for the sensor temp",
        "Unexpected key colour in the request body"]
    assert response.json()["result"]["temp"]["count"] == len(
        values_of(seeded, "temp", T0, T0 + 600 * NS_PER_S))


@pytest.mark.parametrize("body", [
    {"temp": ["median"], "from": f"{DAY} 00:00:00", "to": f"{DAY} 01:00:00"},
    {"colour": "blue", "from": f"{DAY} 00:00:00", "to": f"{DAY} 01:00:00"},
    {"from": f"{DAY} 00:00:00", "to": f"{DAY} 01:00:00"},
])
def test_nothing_valid_left_is_400_with_empty_result(client: TestClient, body: Any) -> None:
    response = client.post("/compute/metrics", json=body)
    assert response.status_code == 400
    assert response.json()["result"] == {}


@pytest.mark.parametrize(("body", "message"), [
    ({"temp": ["count"], "to": f"{DAY} 01:00:00"}, "missing 'from'"),
    ({"temp": ["count"], "from": "22/11/2025", "to": f"{DAY} 01:00:00"}, "not a time"),
    ({"temp": ["count"], "from": f"{DAY} 02:00:00", "to": f"{DAY} 01:00:00"},
     "must not be after"),
    ({"temp": ["count"], "from": "2020-01-01 00:00:00", "to": f"{DAY} 01:00:00"},
     "longer than"),
    ({"temp": ["count"], "from": f"{DAY} 00:00:00", "to": f"{DAY} 01:00:00",
      "device_id": {"$gt": ""}}, "device_id must be a string"),
])
def test_bad_times_and_ids_are_400_with_a_message(client: TestClient, body: Any,
                                                         message: str) -> None:
    response = client.post("/compute/metrics", json=body)
    assert response.status_code == 400
    assert message in response.json()["errors"][0]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b""])
def test_non_object_bodies_are_4xx_never_500(client: TestClient, raw: bytes) -> None:
    response = client.post("/compute/metrics", content=raw,
                           headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


def test_empty_window_and_unknown_sensor_give_count_0_and_nulls(client: TestClient,
                                                                seeded: list[Any]) -> None:
    body = {"temp": ["count", "min", "max", "average", "std"], "nothing": ["count", "max"],
            "from": "2025-11-23 00:00:00", "to": "2025-11-23 01:00:00"}
    response = client.post("/compute/metrics", json=body)
    assert response.status_code == 200
    assert response.json()["result"] == {
        "temp": {"count": 0, "min": None, "max": None, "average": None, "std": None},
        "nothing": {"count": 0, "max": None}}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(points=st.lists(st.tuples(st.integers(0, 7200 * 1000), st.floats(-1e6, 1e6),
                                 st.sampled_from(["p", "q"])), max_size=60),
       bounds=st.tuples(st.integers(-100_000, 7_300_000), st.integers(0, 7_400_000)),
       closed_s=st.integers(0, 7300), device=st.sampled_from([None, "p"]),
       with_stats=st.booleans())
def test_property_metrics_equal_direct_computation(
        client: TestClient, store: Store, points: list[tuple[int, float, str]],
        bounds: tuple[int, int], closed_s: int, device: str | None, with_stats: bool) -> None:
    """Without `iot.stats` (analytics off, or not there yet) raw readings answer."""
    store.clear()
    app = client.app
    assert isinstance(app, FastAPI)
    app.state.metrics_windows = None  # its cache holds final windows of the last example
    readings = {}
    for offset_ms, value, dev in points:
        r = make_reading(dev, "s", T0 + offset_ms * 1_000_000, value=value)
        readings[r.event_id] = r
    store.readings(list(readings.values()), closed_before_ns=T0 + closed_s * NS_PER_S,
                   stats=with_stats)
    start = T0 + bounds[0] * 1_000_000
    end = start + bounds[1] * 1_000_000
    body: dict[str, Any] = {"s": ["count", "min", "max", "average", "sum", "std"],
                            "from": ns_to_iso(start), "to": ns_to_iso(end)}
    if device:
        body["device_id"] = device
    response = client.post("/compute/metrics", json=body)
    assert response.status_code == 200, response.text
    want = direct(values_of(list(readings.values()), "s", start, end, device))
    got = response.json()["result"]["s"]
    for metric in ("count", "min", "max"):
        assert got[metric] == want[metric]
    for metric in ("average", "sum", "std"):
        if want[metric] is None:
            assert got[metric] is None
        else:
            assert got[metric] == pytest.approx(want[metric], rel=1e-6, abs=1e-6 * 1e6)


def reset_cache(client: TestClient) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    app.state.metrics_windows = None


def scalar_readings(rng: random.Random, n: int, span_s: int) -> list[Any]:
    return [make_reading(rng.choice(["p", "q"]), "s", T0 + rng.randrange(span_s * NS_PER_S),
                         value=rng.uniform(-100, 100)) for _ in range(n)]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), lo_s=st.integers(0, 3 * 3600), length_s=st.integers(0, 3600 * 3),
       lo_ns=st.integers(0, NS_PER_S - 1), hi_ns=st.integers(0, NS_PER_S - 1))
def test_closed_ranges_are_answered_from_windows_alone(
        client: TestClient, store: Store, seed: int, lo_s: int, length_s: int, lo_ns: int,
        hi_ns: int) -> None:
    """With every window closed and the raw readings deleted afterwards, the
    answer still equals the direct computation: windows, their children and the
    10 s windows' points hold everything (any second, any nanosecond)."""
    store.clear()
    reset_cache(client)
    readings = scalar_readings(random.Random(seed), 400, 4 * 3600)
    store.readings(readings, stats=True)
    store.db.readings.delete_many({})
    start = T0 + lo_s * NS_PER_S + lo_ns
    end = start + length_s * NS_PER_S + hi_ns
    body = {"s": ["count", "min", "max", "average", "sum", "std"], "from": str(start),
            "to": str(end)}
    for _ in range(2):  # the second time from the cache of final windows
        response = client.post("/compute/metrics", json=body)
        assert response.status_code == 200, response.text
        assert_close(response.json()["result"]["s"], direct(values_of(readings, "s", start, end)))


def test_edges_without_points_or_children_fall_back_to_raw_readings(
        client: TestClient, store: Store) -> None:
    """Windows over the points cap, and windows reloaded by the worker (no
    children), are still exact: the edge goes to smaller windows, then raw."""
    store.clear()
    rng = random.Random(11)
    dense = [make_reading("p", "s", T0 + 3 * NS_PER_S + i * 50_000_000, value=rng.random())
             for i in range(150)]  # 150 readings in one 10 s window: over the cap of 100
    sparse = scalar_readings(rng, 200, 3 * 3600)
    store.readings(dense + sparse, stats=True)
    store.db.windows.update_many({"size_s": 3600}, {"$unset": {"children": ""}})
    cases = [(T0 + 5 * NS_PER_S + 123, T0 + 2 * 3600 * NS_PER_S + 7 * NS_PER_S),
             (T0 + 4 * NS_PER_S, T0 + 6 * NS_PER_S + 999)]
    for start, end in cases:
        body = {"s": ["count", "min", "max", "average", "std"], "device_id": "p",
                "from": str(start), "to": str(end)}
        result = client.post("/compute/metrics", json=body).json()["result"]["s"]
        want = direct(values_of(dense + sparse, "s", start, end, "p"))
        assert want["count"] > 0
        assert_close(result, {k: want[k] for k in ("count", "min", "max", "average", "std")})


DAY_SIZES = (10, 60, 3600, 21600, 86400)


@pytest.fixture
def day_client(store: Store, api_settings: Any, mqtt_ready: Any) -> Iterator[TestClient]:
    """An app whose analytics also keep 6 h and 1 day windows."""
    day_settings = api_settings.model_copy(update={"analytics_window_sizes_s": list(DAY_SIZES)})
    with TestClient(create_app(day_settings)) as test_client:
        wait_ready(test_client.get)
        yield test_client


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), lo_s=st.integers(0, 2 * 86400), length_s=st.integers(0, 86400),
       lo_ns=st.integers(0, NS_PER_S - 1), closed_s=st.integers(0, 3 * 86400))
def test_ranges_over_days_with_open_windows_equal_direct_computation(
        day_client: TestClient, store: Store, seed: int, lo_s: int, length_s: int, lo_ns: int,
        closed_s: int) -> None:
    """Day, 6 h, hour, minute and 10 s windows, of which those ending after
    `closed_s` are not written yet: the open part comes from raw readings."""
    store.clear()
    reset_cache(day_client)
    readings = scalar_readings(random.Random(seed), 300, 3 * 86400)
    closed = T0 + closed_s * NS_PER_S
    store.db.readings.insert_many([r.to_document() for r in readings])
    windows = [w.to_document() for w in windows_for(readings, DAY_SIZES, closed)]
    if windows:
        store.db.windows.insert_many(windows)
    grace = store.settings.analytics_grace_ms * 1_000_000
    store.db.stats.insert_many(stats_for(readings, closed + grace))
    start = T0 + lo_s * NS_PER_S + lo_ns
    end = start + length_s * NS_PER_S
    body = {"s": ["count", "min", "max", "average", "std"], "from": str(start), "to": str(end)}
    response = day_client.post("/compute/metrics", json=body)
    assert response.status_code == 200, response.text
    want = direct(values_of(readings, "s", start, end))
    assert_close(response.json()["result"]["s"], {k: want[k] for k in body["s"]})
