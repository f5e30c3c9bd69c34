"""`GET /stream` over a real socket (uvicorn in a thread), results written to
the real MongoDB-wire server as the model worker writes them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson

from api.routes.stream import _events
from api.stream_hub import StreamFilter, StreamHub, cursor_of
from contracts.clients import async_mongo_client
from contracts.settings import Settings

from .conftest import Store, make_result


def read_events(url: str, want: int, *, headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None, timeout_s: float = 15,
                on_open: Any = None) -> tuple[list[dict[str, Any]], list[str], int]:
    """Reads until `want` data events arrived or the deadline passed:
    (events with their `id`, comment lines, status)."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=httpx.Timeout(timeout_s, read=2.0)) as http, \
            http.stream("GET", url + "/stream", headers=headers, params=params) as response:
        if on_open:
            on_open()
        current: dict[str, Any] = {}
        lines = response.iter_lines()
        while len(events) < want and time.monotonic() < deadline:
            try:
                line = next(lines)
            except (StopIteration, httpx.ReadTimeout):
                break
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("data: "):
                current.update(orjson.loads(line[6:]))
            elif line == "" and "event_id" in current:
                events.append(current)
                current = {}
        return events, comments, response.status_code


def test_stream_delivers_live_results_with_filters(live_server: str, store: Store) -> None:
    now = time.time_ns()

    def publish() -> None:
        time.sleep(0.3)
        store.results([make_result("d1", "temp", now + i, 20.0 + i, anomaly=i == 2,
                                   scored_at_ns=time.time_ns() + i * 10**6) for i in range(4)]
                      + [make_result("d2", "temp", now + i, 1.0) for i in range(3)])

    events, _, status = read_events(live_server, 4, params={"device_id": "d1"}, on_open=publish)
    assert status == 200
    assert [e["value"] for e in events] == [20.0, 21.0, 22.0, 23.0]
    assert {e["device_id"] for e in events} == {"d1"}
    assert [e["anomaly"] for e in events] == [False, False, True, False]
    anomalies, _, _ = read_events(live_server, 1, params={"anomalies": "true", "since": "0"})
    assert [e["value"] for e in anomalies] == [22.0]


def test_stream_sends_heartbeats_when_idle(live_server: str) -> None:
    _, comments, status = read_events(live_server, 1, timeout_s=2.5)
    assert status == 200
    assert comments.count(": heartbeat") >= 2


def test_stream_resumes_after_last_event_id(live_server: str, store: Store) -> None:
    base = time.time_ns() - 10 * 1_000_000_000
    store.results([make_result("d1", "temp", base + i, float(i), scored_at_ns=base + i * 10**6)
                   for i in range(5)], publish=False)
    first, _, _ = read_events(live_server, 5, params={"since": str(base // 10**6 - 1)})
    assert [e["value"] for e in first] == [0.0, 1.0, 2.0, 3.0, 4.0]
    resume_from = first[1]["id"]

    def publish() -> None:
        time.sleep(0.3)
        store.results([make_result("d1", "temp", base + 99, 99.0)])

    rest, _, _ = read_events(live_server, 4, headers={"Last-Event-ID": resume_from},
                             on_open=publish)
    assert [e["value"] for e in rest] == [2.0, 3.0, 4.0, 99.0]
    assert rest[0]["id"] != resume_from


def test_bad_stream_filters_are_422(live_server: str) -> None:
    with httpx.Client(timeout=5) as http:
        assert http.get(live_server + "/stream", params={"device_id": "$gt"}).status_code == 422
        assert http.get(live_server + "/stream", params={"since": "soon"}).status_code == 422


async def test_slow_client_loses_nothing_when_its_queue_overflows(
        store: Store, api_settings: Settings) -> None:
    """A queue of 2 and 6 results published at once: the client gets the two
    queued, then reads the rest from MongoDB, in order, without duplicates."""
    mongo = async_mongo_client(api_settings)
    try:
        hub = StreamHub(mongo[api_settings.mongo_db],
                        api_settings.model_copy(update={"api_stream_queue_size": 2}))
        now = time.time_ns()
        results = [make_result("d1", "temp", now + i, float(i), scored_at_ns=now + i * 10**6)
                   for i in range(6)]
        events = _events(hub, StreamFilter(), None, heartbeat_s=0.5)
        assert (await anext(events)).startswith(b"retry:")
        store.results(results, publish=False)
        docs = store.db.analytics.find().sort([("scored_at", 1), ("_id", 1)]).to_list()
        for doc in docs:
            hub.publish(doc)
        (sub,) = hub.subscribers
        assert sub.overflowed and sub.queue.qsize() == 2
        got = [await asyncio.wait_for(anext(events), 10) for _ in range(6)]
        values = [orjson.loads(chunk.split(b"data: ")[1])["value"] for chunk in got]
        assert values == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert got[-1].startswith(b"id: %d-" % cursor_of(docs[-1])[0])
        await events.aclose()
        assert not hub.subscribers
    finally:
        await mongo.close()
