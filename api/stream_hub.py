"""Live scored results for `GET /stream`.

Live source: MQTT `analytics/{device_id}/{sensor}` (the model worker publishes
every scored result there, QoS 1), one subscription shared by all clients.
Resume source: MongoDB `iot.analytics`, ordered by `(scored_at, _id)`, which
is also the SSE event id. Polling MongoDB for the live feed was the other
option; FerretDB (SQLite) has no change streams and pushes down no range
filter, so every poll would scan the whole collection; MQTT costs nothing
while idle and reaches clients within milliseconds. MongoDB is read only to
replay: after `Last-Event-ID`, `since`, or a client's overflow.

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
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
import orjson
from pymongo.asynchronous.database import AsyncDatabase

from api.pagination import after_cursor, as_utc, encode_cursor
from api.timeparse import parse_time
from contracts.clients import mqtt_tls_context
from contracts.errors import EdgepipeError
from contracts.events import NS_PER_MS, datetime_to_ns, ns_to_datetime
from contracts.settings import Settings

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


def results_filter(template: str) -> str:
    """`analytics/{device_id}/{sensor}` -> `analytics/+/+`."""
    return template.replace("{device_id}", "+").replace("{sensor}", "+")


def document_from_message(payload: bytes) -> dict[str, Any]:
    """A published result (ScoredResult JSON) in the stored document's shape."""
    try:
        doc = orjson.loads(payload)
        doc["_id"] = str(doc.pop("event_id"))
        doc["scored_at"] = ns_to_datetime(parse_time("scored_at", doc["scored_at"]))
        doc["ts"] = ns_to_datetime(parse_time("ts", doc["ts"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, EdgepipeError) as exc:
        raise EdgepipeError(f"not a scored result: {exc}") from exc
    if not isinstance(doc.get("device_id"), str) or not isinstance(doc.get("sensor"), str):
        raise EdgepipeError("not a scored result: device_id and sensor must be strings")
    return dict(doc)


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
    def __init__(self, db: AsyncDatabase[dict[str, Any]], settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.overlap_ms = int(settings.api_stream_overlap_s * 1000)
        self.subscribers: set[Subscriber] = set()
        self.subscribed = asyncio.Event()  # set while the MQTT subscription is live
        self._seen: dict[str, int] = {}  # QoS 1 may redeliver: _id -> arrival ms
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="stream-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def attach(self, stream_filter: StreamFilter) -> Subscriber:
        sub = Subscriber(stream_filter, asyncio.Queue(self.settings.api_stream_queue_size))
        self.subscribers.add(sub)
        return sub

    def detach(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    @property
    def low_mark_ms(self) -> int:
        """Results stamped before this will not arrive live any more (bar a
        publisher running late by more than the overlap)."""
        return time.time_ns() // NS_PER_MS - self.overlap_ms

    async def _listen(self) -> None:
        settings = self.settings
        topic = results_filter(settings.mqtt_results_topic)
        while True:
            try:
                async with aiomqtt.Client(
                        settings.mqtt_host, settings.mqtt_port,
                        username=settings.mqtt_username,
                        password=settings.mqtt_password.get_secret_value(),
                        identifier=f"edgepipe-api-{uuid.uuid4().hex[:10]}",
                        keepalive=settings.mqtt_keepalive,
                        tls_context=mqtt_tls_context(settings)) as client:
                    await client.subscribe(topic, qos=1)
                    self.subscribed.set()
                    log.info("stream subscribed", extra={"topic": topic})
                    async for message in client.messages:
                        self._receive(bytes(message.payload))
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                log.warning("stream MQTT connection lost; retrying", extra={"error": str(exc)})
                await asyncio.sleep(2)

    def _receive(self, payload: bytes) -> None:
        try:
            doc = document_from_message(payload)
        except EdgepipeError as exc:
            log.warning("ignored a message on the results topic", extra={"error": str(exc)})
            return
        now_ms = time.time_ns() // NS_PER_MS
        if doc["_id"] in self._seen:
            return
        self._seen[doc["_id"]] = now_ms
        if len(self._seen) > 100_000:
            floor = now_ms - self.overlap_ms
            self._seen = {k: v for k, v in self._seen.items() if v >= floor}
        self.publish(doc)

    def publish(self, doc: dict[str, Any]) -> None:
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
