"""Live scored results for `GET /stream`.

Source: MongoDB `iot.analytics`, polled by `scored_at` by ONE task shared by
all clients, and only while someone is listening. FerretDB has no change
streams, and resuming from `Last-Event-ID` needs a query over stored results
anyway, so the live path and the resume path read the same collection: the
order `(scored_at, _id)` is the SSE event id. Each poll re-reads the last
`overlap` seconds, because a worker may commit a result stamped slightly before
one another worker already committed; ids already sent are skipped.

Back-pressure: each client has a bounded queue. When it fills, the client is
not cut off and nothing is dropped: it leaves the live feed, reads what it
missed from MongoDB at its own pace, and rejoins. Memory per client stays at
most `queue_size` results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.pagination import after_cursor, as_utc, encode_cursor
from contracts.events import NS_PER_MS, datetime_to_ns, ns_to_datetime

log = logging.getLogger(__name__)
Cursor = tuple[int, str]  # (scored_at in epoch ms, _id)
PAGE = 500


def cursor_of(doc: dict[str, Any]) -> Cursor:
    return datetime_to_ns(as_utc(doc["scored_at"])) // NS_PER_MS, str(doc["_id"])


def format_event_id(cursor: Cursor) -> str:
    return f"{cursor[0]}-{cursor[1]}"


def parse_event_id(text: str) -> Cursor | None:
    """None for an id this API did not hand out: the client then starts live."""
    ms, dash, doc_id = text.strip().partition("-")
    if not dash or not ms.isdigit() or not doc_id:
        return None
    return int(ms), doc_id


@dataclass(slots=True)
class StreamFilter:
    device_id: str | None = None
    sensor: str | None = None
    anomalies: bool = False

    def query(self) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if self.device_id is not None:
            query["device_id"] = self.device_id
        if self.sensor is not None:
            query["sensor"] = self.sensor
        if self.anomalies:
            query["anomaly"] = True
        return query

    def matches(self, doc: dict[str, Any]) -> bool:
        return ((self.device_id is None or doc.get("device_id") == self.device_id)
                and (self.sensor is None or doc.get("sensor") == self.sensor)
                and (not self.anomalies or doc.get("anomaly") is True))


@dataclass(eq=False)
class Subscriber:
    filter: StreamFilter
    queue: asyncio.Queue[dict[str, Any]]
    overflowed: bool = False


class StreamHub:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, poll_s: float, overlap_s: float,
                 queue_size: int) -> None:
        self.db = db
        self.poll_s = poll_s
        self.overlap_ms = int(overlap_s * 1000)
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.position: Cursor = (0, "")
        self._seen: dict[str, int] = {}  # _id -> scored_at ms, for the overlap re-read
        self._active = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def attach(self, stream_filter: StreamFilter) -> Subscriber:
        if not self.subscribers:
            # Idle until now: start from the present; the overlap covers late commits.
            self.position = (time.time_ns() // NS_PER_MS, "")
            self._seen.clear()
        sub = Subscriber(stream_filter, asyncio.Queue(self.queue_size))
        self.subscribers.add(sub)
        self._active.set()
        return sub

    def detach(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self._active.clear()

    @property
    def low_mark_ms(self) -> int:
        """Results stamped before this are never delivered live again."""
        return self.position[0] - self.overlap_ms

    async def _run(self) -> None:
        while True:
            await self._active.wait()
            try:
                for doc in await self._poll():
                    self._publish(doc)
            except Exception:  # a Mongo hiccup must not end the live feed
                log.exception("stream poll failed; retrying")
            await asyncio.sleep(self.poll_s)

    async def _poll(self) -> list[dict[str, Any]]:
        analytics = self.db.analytics
        fresh = await analytics.find(
            after_cursor("scored_at", _cursor_token(self.position))
        ).sort([("scored_at", 1), ("_id", 1)]).limit(PAGE * 4).to_list(None)
        recent = await analytics.find(
            {"scored_at": {"$gte": ns_to_datetime(self.low_mark_ms * NS_PER_MS),
                           "$lte": ns_to_datetime(self.position[0] * NS_PER_MS)}},
            {"_id": 1}).to_list(None)
        late_ids = [d["_id"] for d in recent if str(d["_id"]) not in self._seen]
        late = (await analytics.find({"_id": {"$in": late_ids}}).to_list(None)
                if late_ids else [])
        batch: list[dict[str, Any]] = []
        for doc in late + fresh:
            cursor = cursor_of(doc)
            if cursor[1] in self._seen:
                continue
            self._seen[cursor[1]] = cursor[0]
            self.position = max(self.position, cursor)
            batch.append(doc)
        floor = self.low_mark_ms
        self._seen = {k: v for k, v in self._seen.items() if v >= floor}
        return batch

    def _publish(self, doc: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            if sub.overflowed or not sub.filter.matches(doc):
                continue
            try:
                sub.queue.put_nowait(doc)
            except asyncio.QueueFull:
                sub.overflowed = True

    async def replay(self, stream_filter: StreamFilter,
                     after: Cursor) -> AsyncIterator[dict[str, Any]]:
        """Stored results after `after`, in order, page by page from MongoDB."""
        cursor = after
        while True:
            query = {**stream_filter.query(),
                     **after_cursor("scored_at", _cursor_token(cursor))}
            page = await self.db.analytics.find(query).sort(
                [("scored_at", 1), ("_id", 1)]).limit(PAGE).to_list(None)
            for doc in page:
                yield doc
            if len(page) < PAGE:
                return
            cursor = cursor_of(page[-1])


def _cursor_token(cursor: Cursor) -> str:
    return encode_cursor(ns_to_datetime(cursor[0] * NS_PER_MS), cursor[1])
