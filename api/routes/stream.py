"""`GET /stream`: scored results as server-sent events (see api/stream_hub.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.deps import HubDep, SettingsDep
from api.observability import STREAM_CLIENTS, STREAM_DROPPED, STREAM_EVENTS
from api.schemas import StreamQuery, jsonable
from api.stream_hub import (
    Cursor,
    StreamFilter,
    StreamHub,
    cursor_of,
    format_event_id,
    parse_event_id,
)
from contracts.events import NS_PER_MS, datetime_to_ns

router = APIRouter(tags=["stream"])


def _event(doc: dict[str, Any], event_id: Cursor) -> bytes:
    data = jsonable(doc)
    data["event_id"] = str(data.pop("_id"))
    return b"id: %s\ndata: %s\n\n" % (format_event_id(event_id).encode(), orjson.dumps(data))


async def _events(hub: StreamHub, flt: StreamFilter, last: Cursor | None,
                  heartbeat_s: float) -> AsyncGenerator[bytes, None]:
    STREAM_CLIENTS.inc()
    sub = hub.attach(flt)
    low = hub.low_mark_ms
    try:
        yield b"retry: 2000\n: connected\n\n"
        while True:
            replayed: set[str] = set()
            if last is not None:
                async for doc in hub.replay(flt, last):
                    cursor = cursor_of(doc)
                    last = max(last, cursor)
                    if cursor[0] >= low:
                        replayed.add(cursor[1])
                    STREAM_EVENTS.inc()
                    yield _event(doc, last)
            # After an overflow, send what was queued, then read the rest from MongoDB.
            while not (sub.overflowed and sub.queue.empty()):
                try:
                    doc = await asyncio.wait_for(sub.queue.get(), heartbeat_s)
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                cursor = cursor_of(doc)
                if cursor[1] in replayed:
                    continue
                last = cursor if last is None else max(last, cursor)
                STREAM_EVENTS.inc()
                yield _event(doc, last)
            # Too slow for the live feed: rejoin it, then read the gap from MongoDB.
            STREAM_DROPPED.inc()
            hub.detach(sub)
            sub = hub.attach(flt)
            low = hub.low_mark_ms
    finally:
        hub.detach(sub)
        STREAM_CLIENTS.dec()


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def get_stream(hub: HubDep, settings: SettingsDep,
                     query: Annotated[StreamQuery, Query()],
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Server-sent events of scored results, filtered by device and sensor
    (`anomalies=true` for anomalies only). Each event's `id` resumes the stream:
    reconnect with the `Last-Event-ID` header (browsers do this by themselves).
    `since` replays stored results from that time when there is no id to resume."""
    flt = StreamFilter(query.device_id, query.sensor, query.anomalies)
    last = parse_event_id(last_event_id) if last_event_id else None
    if last is None and query.since is not None:
        last = (datetime_to_ns(query.since) // NS_PER_MS, "")
    return StreamingResponse(
        _events(hub, flt, last, settings.api_stream_heartbeat_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
