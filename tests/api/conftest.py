"""Fixtures of the API tests: an app against the test's own MongoDB database
(in-process TestClient, or uvicorn on a free port for streaming and the
browser), and a `store` that writes readings, windows and scored results the
way the bridge, stream analytics and the model worker do."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pymongo import MongoClient

from api.main import create_app
from contracts.clients import mqtt_client, mqtt_connect
from contracts.events import NS_PER_S, Reading, make_event_id
from contracts.results import ModelStamp, ScoredResult
from contracts.settings import Settings
from contracts.windows import MAGNITUDE_FIELD, SCALAR_FIELD, Moments, WindowRecord, series_id

SIZES = (10, 60, 3600)
POINTS_MAX = 100


def reading_fields(reading: Reading) -> list[tuple[str, float]]:
    """The series a reading feeds, as stream analytics defines them."""
    fields: list[tuple[str, float]] = []
    if reading.value is not None:
        fields.append((SCALAR_FIELD, reading.value))
    if reading.values:
        fields.extend(reading.values.items())
        fields.append((MAGNITUDE_FIELD, sum(v * v for v in reading.values.values()) ** 0.5))
    return fields


def windows_for(readings: list[Reading], sizes: tuple[int, ...] = SIZES,
                closed_before_ns: int | None = None,
                points_max: int = POINTS_MAX) -> list[WindowRecord]:
    """Tumbling windows over the readings; windows ending after `closed_before_ns`
    are still open, so stream analytics has not written them yet. Smallest
    windows with at most `points_max` readings carry them, as the worker's do."""
    found: dict[tuple[str, str, str, int, int], WindowRecord] = {}
    for reading in readings:
        for field_name, value in reading_fields(reading):
            for size in sizes:
                start = reading.ts_ns - reading.ts_ns % (size * NS_PER_S)
                key = (reading.device_id, reading.sensor, field_name, size, start)
                record = found.get(key)
                if record is None:
                    record = found[key] = WindowRecord(
                        reading.device_id, reading.sensor, field_name, size, start, Moments(),
                        reading.ts_ns, reading.ts_ns)
                    if size == min(sizes):
                        record.points = []
                record.moments.add(value)
                record.first_ts_ns = min(record.first_ts_ns, reading.ts_ns)
                record.last_ts_ns = max(record.last_ts_ns, reading.ts_ns)
                if record.points is not None:
                    record.points.append((reading.ts_ns, value))
    add_children(found.values(), sizes)
    for record in found.values():
        if record.points is not None:
            record.points = (None if len(record.points) > points_max
                             else sorted(record.points))
    return [w for w in found.values()
            if closed_before_ns is None or w.end_ns <= closed_before_ns]


def add_children(records: Iterable[WindowRecord], sizes: tuple[int, ...]) -> None:
    """Each window of a larger size gets the moments of the windows of the next
    smaller size inside it, as the worker's do."""
    ordered = sorted(sizes)
    smaller = dict(zip(ordered[1:], ordered, strict=False))
    by_parent: dict[tuple[str, str, str, int, int], list[WindowRecord]] = {}
    for record in records:
        parent_size = next((big for big, small in smaller.items() if small == record.size_s),
                           None)
        if parent_size is not None:
            parent_start = record.start_ns - record.start_ns % (parent_size * NS_PER_S)
            by_parent.setdefault((record.device_id, record.sensor, record.field, parent_size,
                                  parent_start), []).append(record)
    for record in records:
        if record.size_s in smaller:
            kids = by_parent.get((record.device_id, record.sensor, record.field,
                                  record.size_s, record.start_ns), [])
            record.children = sorted((k.start_ns, k.moments) for k in kids)
            record.children_size_s = next(small for big, small in smaller.items()
                                          if big == record.size_s)


def stats_for(readings: list[Reading], last_ts_ns: int) -> list[dict[str, Any]]:
    """`iot.stats` documents as the worker keeps them, with `last_ts_ns` the
    stream time analytics reached (windows ending by it minus grace are stored)."""
    found: dict[tuple[str, str, str], Moments] = {}
    for reading in readings:
        for field_name, value in reading_fields(reading):
            found.setdefault((reading.device_id, reading.sensor, field_name), Moments()).add(value)
    return [{"_id": series_id(*key), "device_id": key[0], "sensor": key[1], "field": key[2],
             **moments.to_dict(), "last_ts_ns": last_ts_ns} for key, moments in found.items()]


def make_reading(device: str, sensor: str, ts_ns: int, value: float | None = None,
                 values: dict[str, float] | None = None) -> Reading:
    return Reading(make_event_id(device, sensor, ts_ns), device, sensor, ts_ns, value=value,
                   values=values, received_at_ns=ts_ns)


def make_result(device: str, sensor: str, ts_ns: int, value: float, *, anomaly: bool = False,
                scored_at_ns: int | None = None) -> ScoredResult:
    band = (value + 5.0, value + 10.0) if anomaly else (value - 1.0, value + 1.0)
    return ScoredResult(make_event_id(device, sensor, ts_ns), device, sensor, ts_ns, value,
                        value + (7.5 if anomaly else 0.1), band[0], band[1],
                        ModelStamp("test-model", "constant", "0123456789ab", ts_ns),
                        scored_at_ns or time.time_ns())


@dataclass
class Store:
    mongo: MongoClient[dict[str, Any]]
    settings: Settings

    @property
    def db(self) -> Any:
        return self.mongo[self.settings.mongo_db]

    def readings(self, readings: list[Reading], *, windows: bool = True,
                 closed_before_ns: int | None = None, stats: bool = False) -> None:
        """Raw readings and, with `windows`, the windows stream analytics would
        have written; with `stats` also its `iot.stats` documents, whose stream
        time says up to where the windows are written."""
        if readings:
            self.db.readings.insert_many([r.to_document() for r in readings], ordered=False)
        if windows and readings:
            docs = [w.to_document() for w in windows_for(readings, SIZES, closed_before_ns)]
            if docs:
                self.db.windows.insert_many(docs, ordered=False)
        if windows and stats and readings:
            grace = self.settings.analytics_grace_ms * 1_000_000
            # Without a bound every window is closed and past the allowed lateness.
            last_ts = (max(r.ts_ns for r in readings) + (max(SIZES) + 3600) * NS_PER_S
                       if closed_before_ns is None else closed_before_ns + grace)
            for doc in stats_for(readings, last_ts):
                self.db.stats.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def results(self, results: list[ScoredResult], *, publish: bool = True) -> None:
        """Stored, then published on MQTT, as the model worker does."""
        self.db.analytics.insert_many([r.to_document() for r in results], ordered=False)
        if not publish:
            return
        client = mqtt_client(self.settings)
        mqtt_connect(client, self.settings)
        client.loop_start()
        try:
            sent = [client.publish(self.settings.mqtt_results_topic.format(
                device_id=r.device_id, sensor=r.sensor), r.to_json(), qos=1) for r in results]
            for info in sent:
                info.wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()

    def clear(self) -> None:
        for name in ("readings", "windows", "analytics", "stats"):
            self.db[name].delete_many({})


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "api_stream_heartbeat_s": 0.5, "api_stream_overlap_s": 1.0,
        "mqtt_results_topic": f"t/{settings.mongo_db}/analytics/{{device_id}}/{{sensor}}",
        "api_ingest_token": settings.api_ingest_token, "analytics_window_sizes_s": list(SIZES)})


@pytest.fixture
def store(mongo: MongoClient[dict[str, Any]], api_settings: Settings) -> Store:
    return Store(mongo, api_settings)


def wait_ready(get: Any, timeout_s: float = 15) -> None:
    """Until MongoDB, Kafka and the MQTT results subscription are all up."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = get("/ready")
        if response.status_code == 200:
            return
        assert time.monotonic() < deadline, f"API not ready: {response.text}"
        time.sleep(0.1)


@pytest.fixture
def client(store: Store, api_settings: Settings, mqtt_ready: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as test_client:
        wait_ready(test_client.get)
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_server(store: Store, api_settings: Settings, mqtt_ready: Settings) -> Iterator[str]:
    """The app under uvicorn in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(api_settings), host="127.0.0.1", port=port,
                            log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
        assert thread.is_alive(), "uvicorn exited at start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    wait_ready(lambda path: httpx.get(url + path, timeout=5))
    yield url
    server.should_exit = True
    thread.join(10)
