"""Query endpoints, operations and validation on the real MongoDB-wire server."""

from __future__ import annotations

from fastapi.testclient import TestClient

from contracts.events import NS_PER_S
from contracts.windows import Moments

from .conftest import Store, make_reading, make_result

T0 = 1_763_769_600 * NS_PER_S  # 2025-11-22 00:00:00 UTC


def test_devices_summarise_sensors_counts_and_times(client: TestClient, store: Store) -> None:
    store.readings([make_reading("d1", "temp", T0 + i * NS_PER_S, value=i) for i in range(5)]
                   + [make_reading("d1", "acc", T0 + 9 * NS_PER_S, values={"x": 1.0})]
                   + [make_reading("d2", "temp", T0 + 3 * NS_PER_S, value=1.0)], windows=False)
    devices = client.get("/devices").json()
    assert [d["device_id"] for d in devices] == ["d1", "d2"]
    d1 = devices[0]
    assert d1["count"] == 6
    assert d1["first_seen"] == "2025-11-22T00:00:00.000Z"
    assert d1["last_seen"] == "2025-11-22T00:00:09.000Z"
    assert [(s["sensor"], s["count"]) for s in d1["sensors"]] == [("acc", 1), ("temp", 5)]
    assert len(client.get("/devices", params={"device_id": "d2"}).json()) == 1


def test_readings_filter_sort_and_page_without_gaps(client: TestClient, store: Store) -> None:
    # Same timestamp on two devices: the cursor must break the tie by _id.
    readings = [make_reading(dev, "temp", T0 + (i // 2) * NS_PER_S, value=i)
                for i, dev in zip(range(40), ["a", "b"] * 20, strict=True)]
    store.readings(readings, windows=False)
    seen, cursor = [], None
    for _ in range(20):
        params = {"limit": 7, "from": "2025-11-22T00:00:02Z", "to": str(T0 // NS_PER_S + 15)}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/readings", params=params).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 26  # seconds 2..14, two devices
    assert len({r["event_id"] for r in seen}) == 26
    assert [r["ts"] for r in seen] == sorted(r["ts"] for r in seen)
    only_b = client.get("/readings", params={"device_id": "b", "sensor": "temp"}).json()
    assert {r["device_id"] for r in only_b["items"]} == {"b"} and len(only_b["items"]) == 20


def test_limit_is_capped_and_validated(client: TestClient, store: Store) -> None:
    store.readings([make_reading("d", "s", T0 + i * 1000, value=i) for i in range(1005)],
                   windows=False)
    page = client.get("/readings", params={"limit": 5000}).json()
    assert len(page["items"]) == 1000 and page["next_cursor"]
    assert client.get("/readings", params={"limit": 0}).status_code == 422


def test_analytics_and_anomaly_filter(client: TestClient, store: Store) -> None:
    store.results([make_result("d1", "temp", T0 + i * NS_PER_S, 20.0 + i, anomaly=i % 4 == 0)
                   for i in range(12)])
    everything = client.get("/analytics").json()["items"]
    assert len(everything) == 12
    assert everything[0]["yhat_lower"] == 25.0 and everything[0]["anomaly"] is True
    anomalies = client.get("/analytics", params={"anomalies": "true"}).json()["items"]
    assert [a["value"] for a in anomalies] == [20.0, 24.0, 28.0]


def test_windows_and_stats(client: TestClient, store: Store) -> None:
    store.readings([make_reading("d1", "temp", T0 + i * NS_PER_S, value=float(i))
                    for i in range(120)])
    windows = client.get("/windows", params={"sensor": "temp", "size_s": 60}).json()["items"]
    assert [(w["start"], w["count"], w["mean"]) for w in windows] == [
        ("2025-11-22T00:00:00.000Z", 60, 29.5), ("2025-11-22T00:01:00.000Z", 60, 89.5)]
    stats = Moments()
    for i in range(120):
        stats.add(float(i))
    store.db.stats.insert_one({"_id": "d1|temp|value", "device_id": "d1", "sensor": "temp",
                               "field": "value", **stats.to_dict(),
                               "last_ts": windows[0]["start"]})
    items = client.get("/stats", params={"device_id": "d1"}).json()["items"]
    assert items[0]["_id"] == "d1|temp|value" and items[0]["count"] == 120
    assert client.get("/stats", params={"device_id": "nobody"}).json()["items"] == []


def test_injection_and_bad_query_values_are_4xx(client: TestClient, store: Store) -> None:
    store.readings([make_reading("d1", "temp", T0, value=1.0)], windows=False)
    for params in ({"device_id": "$gt"}, {"device_id[$gt]": ""}, {"sensor": "a/#"},
                   {"from": "yesterday"}, {"cursor": "garbage"}, {"limit": "many"}):
        response = client.get("/readings", params=params)
        assert 400 <= response.status_code < 500, params
        assert "detail" in response.json()
    assert client.get("/devices", params={"device_id": "$ne"}).status_code == 400


def test_health_ready_metrics_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "mongo": "ok",
                                                         "kafka": "ok", "mqtt": "ok"}
    client.get("/readings")
    metrics = client.get("/metrics").text
    assert 'api_requests_total{method="GET",route="/readings",status="200"}' in metrics
    schema = client.get("/openapi.json").json()
    assert {"/compute/metrics", "/stream", "/ingest/sensor-logger"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
