"""`python -m bridge replay-dlq`: re-decode stored dead letters with the
current routes and codecs (after a codec fix or a new route), produce what now
decodes to Kafka, and mark those dead letters replayed.

Dead letters are marked, not deleted: the record of what arrived broken stays
browsable, and a second run skips what was replayed. A dead letter is marked
only after Kafka acknowledged every reading it produced; the readings' event
ids make a replay that is interrupted and run again harmless downstream.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from bridge.codecs import decode
from bridge.routes import Route, key_for, load_routes, match_route
from contracts.clients import kafka_producer, mongo_client
from contracts.dead_letters import DeadLetter
from contracts.errors import DecodeError, SchemaError, ServiceUnavailable
from contracts.events import Reading
from contracts.settings import Settings

log = logging.getLogger("bridge.replay")

CHUNK = 500
Document = dict[str, Any]


@dataclass
class ReplaySummary:
    examined: int = 0
    replayed: int = 0
    readings: int = 0
    still_failing: collections.Counter[str] = field(default_factory=collections.Counter)
    delivery_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"examined": self.examined, "replayed": self.replayed,
                "readings": self.readings, "still_failing": dict(self.still_failing),
                "delivery_failures": self.delivery_failures}


def redecode(routes: list[Route], letter: DeadLetter,
             max_payload_bytes: int) -> tuple[Route, list[Reading]]:
    """The route and readings a dead letter yields today; DecodeError if none."""
    if letter.topic.startswith("kafka:"):
        raise DecodeError("not_mqtt", "a record the sink could not read, not MQTT input")
    if letter.payload_size is not None:
        raise DecodeError("truncated", "only the start of the payload was kept")
    matched = match_route(routes, letter.topic)
    if matched is None:
        raise DecodeError("no_route", f"no route matches topic {letter.topic!r}")
    route, fields = matched
    readings = decode(route, fields, letter.topic, letter.payload, qos=1,
                      received_at_ns=letter.received_at_ns,
                      max_payload_bytes=max_payload_bytes)
    return route, readings


class _Delivery:
    """Counts Kafka acknowledgements for the readings of one dead letter."""

    __slots__ = ("event_ids", "failed", "remaining")

    def __init__(self, event_ids: list[str]) -> None:
        self.event_ids, self.remaining, self.failed = event_ids, len(event_ids), False

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed = True
        else:
            self.remaining -= 1


class Replayer:
    def __init__(self, settings: Settings, routes: list[Route],
                 dead_letters: Collection[Document], producer: Producer | None) -> None:
        self.settings, self.routes = settings, routes
        self.dead_letters, self.producer = dead_letters, producer
        self.summary = ReplaySummary()

    def run(self, *, since: datetime | None, limit: int | None) -> ReplaySummary:
        query: Document = {"replayed_at": {"$exists": False}}
        if since is not None:
            query["received_at"] = {"$gte": since}
        cursor = self.dead_letters.find(query).sort("received_at", 1)
        if limit is not None:
            cursor = cursor.limit(limit)
        chunk: list[Document] = []
        for doc in cursor:
            chunk.append(doc)
            if len(chunk) >= CHUNK:
                self._replay_chunk(chunk)
                chunk = []
        self._replay_chunk(chunk)
        return self.summary

    def _replay_chunk(self, docs: list[Document]) -> None:
        deliveries: dict[Any, _Delivery] = {}
        for doc in docs:
            self.summary.examined += 1
            try:
                route, readings = redecode(self.routes, DeadLetter.from_dict(doc),
                                           self.settings.bridge_max_payload_bytes)
            except (DecodeError, SchemaError) as exc:
                reason = exc.reason if isinstance(exc, DecodeError) else "unreadable"
                self.summary.still_failing[reason] += 1
                self._note_failure(doc["_id"], reason, str(exc))
                continue
            if self.producer is None:  # dry run
                self.summary.replayed += 1
                self.summary.readings += len(readings)
                continue
            delivery = _Delivery([r.event_id for r in readings])
            deliveries[doc["_id"]] = delivery
            for reading in readings:
                self.producer.produce(route.kafka_topic, reading.to_json(),
                                      key_for(route, reading), on_delivery=delivery.on_delivery,
                                      headers=[("replayed_from", str(doc["_id"]).encode())])
                self.producer.poll(0)
        if self.producer is None or not deliveries:
            return
        if self.producer.flush(60.0) > 0:
            raise ServiceUnavailable("Kafka did not acknowledge the replayed readings in 60 s")
        now = datetime.now(UTC)
        for dead_letter_id, delivery in deliveries.items():
            if delivery.failed or delivery.remaining:
                self.summary.delivery_failures += 1
                continue
            self.dead_letters.update_one({"_id": dead_letter_id}, {"$set": {
                "replayed_at": now, "replayed_event_ids": delivery.event_ids}})
            self.summary.replayed += 1
            self.summary.readings += len(delivery.event_ids)

    def _note_failure(self, dead_letter_id: Any, reason: str, message: str) -> None:
        if self.producer is None:
            return
        self.dead_letters.update_one({"_id": dead_letter_id}, {"$set": {
            "last_replay_at": datetime.now(UTC), "last_replay_reason": reason,
            "last_replay_message": message[:500]}})


def replay_dead_letters(settings: Settings, *, since: datetime | None, limit: int | None,
                        dry_run: bool) -> int:
    """Runs the replay and prints its summary as one JSON line; exit code 1 if
    some readings were not acknowledged by Kafka (run it again)."""
    routes = load_routes(settings, topic_prefix=settings.bridge_topic_prefix)
    client = mongo_client(settings)
    producer = None if dry_run else kafka_producer(settings)
    started = time.monotonic()
    try:
        summary = Replayer(settings, routes, client[settings.mongo_db]["dead_letters"],
                           producer).run(since=since, limit=limit)
    except PyMongoError as exc:
        raise ServiceUnavailable(f"MongoDB at {settings.mongo_db}.dead_letters: {exc}") from exc
    finally:
        client.close()
    result = {**summary.as_dict(), "dry_run": dry_run,
              "seconds": round(time.monotonic() - started, 2)}
    log.info("replay finished", extra=result)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 1 if summary.delivery_failures else 0
