"""Checkpoints of the analytics stage: what the stage produced since the last
checkpoint (windows coalesced by `_id`, statistics by series, the partitions
whose state changed), written in one go, outputs first and state last.

A checkpoint is the unit of exactness: its state documents - each holding its
partition's last applied offset - are written only after every window and
statistic the state reflects is durable (MongoDB, and Kafka flushed). Whatever
a crash loses after the last checkpoint is recomputed from that state by
re-reading `readings` from Kafka (see `replay.py`).

Checkpoints run on one background thread, one at a time, so MongoDB's and
Kafka's round trips overlap the next batches instead of stalling the loop.
"""

from __future__ import annotations

import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from contracts.collections import insert_or_replace, replace_upsert
from contracts.errors import EdgepipeError, ServiceUnavailable
from model_worker.analytics import metrics
from model_worker.analytics.state import FieldState, StateSnapshot

FLUSH_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Pending:
    """Outputs not yet in a checkpoint; later emissions of an `_id` replace earlier ones."""

    windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, FieldState] = field(default_factory=dict)  # series changed, by id
    partitions: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.windows or self.stats or self.partitions)


@dataclass(slots=True)
class Checkpoint:
    windows: list[dict[str, Any]]
    stats: list[dict[str, Any]]
    states: list[StateSnapshot]


class CheckpointWriter:
    def __init__(self, windows: Collection[dict[str, Any]], stats: Collection[dict[str, Any]],
                 states: Collection[dict[str, Any]], producer: Producer, topic: str) -> None:
        self.windows = windows
        self.stats = stats
        self.states = states
        self.producer = producer
        self.topic = topic
        self._failures: list[KafkaError] = []
        self._executor = futures.ThreadPoolExecutor(1, thread_name_prefix="analytics-checkpoint")
        self._running: futures.Future[None] | None = None

    def produce(self, records: list[tuple[bytes, bytes]]) -> None:
        """Queue (key, window JSON) records for Kafka; the next checkpoint flushes
        them before its state."""
        for key, payload in records:
            while True:
                try:
                    self.producer.produce(self.topic, payload, key=key,
                                          on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    self.producer.poll(0.05)
                except KafkaException as exc:
                    raise ServiceUnavailable(f"Kafka produce {self.topic}: {exc}") from exc
        self.producer.poll(0)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(error)

    def submit(self, checkpoint: Checkpoint, *, wait: bool) -> None:
        """Write `checkpoint` after the previous one finished; raises
        ServiceUnavailable if the previous one (or, with `wait`, this one) failed."""
        self.wait()
        self._running = self._executor.submit(self._write, checkpoint)
        if wait:
            self.wait()

    def check(self) -> None:
        """Re-raise the failure of a checkpoint that already ended; never blocks."""
        if self._running is not None and self._running.done():
            self.wait()

    def wait(self) -> None:
        """Block until the running checkpoint is written; re-raise its failure."""
        running, self._running = self._running, None
        if running is None:
            return
        try:
            running.result()
        except EdgepipeError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(f"analytics checkpoint failed: {exc!r:.300}") from exc

    @property
    def busy(self) -> bool:
        return self._running is not None and not self._running.done()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _write(self, checkpoint: Checkpoint) -> None:
        started = part_started = time.perf_counter()

        def part(name: str) -> None:  # where a checkpoint's time goes, per part
            nonlocal part_started
            now = time.perf_counter()
            metrics.WRITE_PART_SECONDS.labels(part=name).observe(now - part_started)
            part_started = now

        # A first emission is an insert; an `_id` already there (a replay after
        # a crash) is replaced by the replayed content. Only revisions upsert:
        # FerretDB pays a round of work per upserted document.
        first = [d for d in checkpoint.windows if d["revision"] == 0]
        revised = [d for d in checkpoint.windows if d["revision"] != 0]
        try:
            insert_or_replace(self.windows, first)
            replace_upsert(self.windows, revised)
            part("windows")
            replace_upsert(self.stats, checkpoint.stats)
            part("stats")
        except PyMongoError as exc:
            raise ServiceUnavailable(f"MongoDB analytics write: {exc!s:.300}") from exc
        pending = self.producer.flush(FLUSH_TIMEOUT_S)
        failures, self._failures = self._failures, []
        if pending or failures:
            raise ServiceUnavailable(f"Kafka {self.topic}: {pending} windows undelivered"
                                     f", errors {[str(f) for f in failures[:3]]}")
        part("flush")
        try:
            for snapshot in checkpoint.states:
                doc = snapshot.document()
                self.states.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise ServiceUnavailable(f"MongoDB analytics state write: {exc!s:.300}") from exc
        part("state")
        metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.CHECKPOINTS.inc()
