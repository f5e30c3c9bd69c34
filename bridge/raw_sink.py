"""Kafka `readings` -> MongoDB `iot.readings`, `readings.dlq` -> `iot.dead_letters`.

Consume up to `bridge_sink_batch_size` records, write them with
`insert_many(ordered=False)` (`_id` = event id, so a replayed record is a
duplicate-key no-op counted as success), then commit exactly the consumed
offsets. One writer thread writes while this thread consumes and decodes the
next batch (at most `_PIPELINE_DEPTH` batches outstanding); offsets are
committed in consumption order, each only once its batch and every earlier one
is written. While MongoDB is down the sink stops consuming, pauses its
partitions and retries with backoff; nothing is committed that is not written.

A rebalance may take partitions while batches are outstanding: on a revoke
the sink first finishes and commits what is being written (it still owns the
partitions), on a lost assignment (session expired, e.g. Kafka away longer
than session.timeout.ms) it may not commit at all. Either way the revoked
partitions' offsets are dropped from the batches still pending, and an offset
is only ever committed for a partition assigned at that moment: their records
are read again by whoever owns them next, a duplicate-key no-op. A record is
never consumed without going into a batch (the keepalive poll's included),
and a commit that hangs replaces the consumer (sink_watchdog).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pymongo.database import Database
from pymongo.errors import PyMongoError

from bridge import metrics
from bridge.sink_batch import Batch, Document, build_batch, offset_jumps
from bridge.sink_watchdog import abandon
from contracts.clients import KafkaCallHung, call_within
from contracts.collections import DEAD_LETTERS, READINGS, ensure_indexes, insert_idempotent
from contracts.errors import ServiceUnavailable
from contracts.settings import Settings

log = logging.getLogger("bridge.sink")

_BACKOFF_MAX_S = 10.0
_LAG_INTERVAL_S = 5.0
# Batches being written or waiting for the writer while the next is consumed.
# More than one writer does not help: SQLite (FerretDB) has a single writer.
_PIPELINE_DEPTH = 2
# Documents per insert_many: FerretDB spends less CPU per document on 500 than
# on 2,000 or 5,000 (75 vs 81 vs 85 us measured), and the pipeline hides the
# extra round trips.
_WRITE_CHUNK = 500
# While a write takes longer than this, the waiting consumer still polls (paused).
_KEEPALIVE_POLL_S = 1.0
# A synchronous commit blocks while Kafka is away and fails once it is back;
# one still blocked this long has lost its coordinator for good (sink_watchdog).
_COMMIT_HANG_S = 60.0

def _raise_if_fatal(messages: list[Message]) -> None:
    """A fatal consumer error (librdkafka gives no more records after it) ends
    the sink instead of leaving it polling an empty consumer forever; nothing
    of this batch is committed, so a restarted bridge reads it again."""
    for msg in messages:
        error = msg.error()
        if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
            log.critical("kafka consumer failed for good; the sink stops",
                         extra={"error": str(error)})
            raise ServiceUnavailable(f"raw sink consumer: {error}") from KafkaException(error)


class RawSink:
    def __init__(self, settings: Settings, consumer: Consumer, db: Database[Document],
                 make_consumer: Callable[[], Consumer] | None = None) -> None:
        self.settings, self.consumer = settings, consumer
        # Builds a replacement when a commit hangs; None: the sink stops instead.
        self._make_consumer = make_consumer
        self.replaced = 0
        self.readings = db["readings"]
        self.dead_letters = db["dead_letters"]
        self.mongo_up = True
        self.retrying_since: float | None = None
        self.last_write = time.monotonic()
        self.written = self.duplicates = self.batches = 0
        self.released = 0  # partitions revoked or lost, for tests and logs
        self._in_callback = False  # a rebalance callback runs inside this consumer's call
        self._indexes_ready = False
        self._last_lag = 0.0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sink-write")
        self._pending: collections.deque[tuple[Future[bool], Batch]] = collections.deque()
        self._abandoned = False  # a batch was left unwritten: commit nothing after it
        self._assigned: set[tuple[str, int]] = set()
        self._last_poll = time.monotonic()
        # Records a keepalive poll returned: they lead the next batch (see _wait_paused).
        self._carried: list[Message] = []
        self._paused = False  # a resume after the keepalive poll failed: retried before consuming
        # (topic, partition) -> offset after the last record consumed, to log gaps.
        self._next_offset: dict[tuple[str, int], int] = {}

    def ensure_indexes(self) -> None:
        ensure_indexes(self.readings.database, (READINGS, DEAD_LETTERS))
        self._indexes_ready = True

    def ready(self) -> tuple[bool, dict[str, Any]]:
        stuck_s = 0.0 if self.retrying_since is None else time.monotonic() - self.retrying_since
        return self.mongo_up, {"mongo_up": self.mongo_up, "retrying_s": round(stuck_s, 1),
                               "written": self.written, "duplicates": self.duplicates}

    def subscribe(self) -> None:
        topics = [self.settings.kafka_topic_readings, self.settings.kafka_topic_dlq]
        self.consumer.subscribe(topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("sink subscribed", extra={"topics": topics,
                                           "group": self.settings.bridge_sink_group})

    def run(self, stop: threading.Event) -> None:
        self.subscribe()
        wait_s = self.settings.bridge_sink_batch_wait_ms / 1000
        try:
            while not stop.is_set():
                self._step(wait_s, stop)
                self._report_lag()
            # What the forwarder flushed on its way out is written too, within bounds.
            deadline = time.monotonic() + self.settings.bridge_shutdown_timeout_s
            while time.monotonic() < deadline and self.mongo_up and self._step(1.0, stop):
                pass
            while self._pending:
                self._wait_oldest(1.0)
                self._commit_written()
        finally:
            self._writer.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()  # not committed; close() revokes with nothing in flight
            self.consumer.close()
            log.info("sink stopped", extra={"written": self.written,
                                            "duplicates": self.duplicates,
                                            "batches": self.batches})

    def _step(self, wait_s: float, stop: threading.Event) -> bool:
        """Consume one batch and hand it to the writer, or wait for the writer
        when the pipeline is full or MongoDB is down. False when there was
        nothing to read (or nothing more may be written)."""
        self._commit_written()
        if self._abandoned:
            return False
        if len(self._pending) >= _PIPELINE_DEPTH or (self._pending and not self.mongo_up):
            self._wait_oldest(wait_s)
            self._commit_written()
            return True
        if self._paused:
            self._resume()
        carried, self._carried = self._carried, []
        messages = carried + self.consumer.consume(
            max(1, self.settings.bridge_sink_batch_size - len(carried)), wait_s)
        self._last_poll = time.monotonic()
        if not messages:
            return False
        _raise_if_fatal(messages)
        batch = build_batch(messages, self.settings.kafka_topic_readings)
        if not batch.records:
            return True  # only errors (logged): nothing to write or commit
        self._check_gaps(batch)
        self._pending.append((self._writer.submit(self._write_until_done, batch, stop), batch))
        return True

    def _wait_oldest(self, seconds: float) -> None:
        if not self._pending:
            return
        if self.mongo_up:
            wait_futures([self._pending[0][0]], timeout=max(seconds, 0.05))
            if not self._pending[0][0].done() and \
                    time.monotonic() - self._last_poll > _KEEPALIVE_POLL_S:
                # A slow write must not keep this member from a rebalance (its
                # callbacks run only inside a poll) or from max.poll.interval.ms.
                self._wait_paused(0.0)
        else:
            self._wait_paused(min(max(seconds, 0.05), 1.0))

    def _commit_written(self) -> None:
        """Commits, in consumption order, every batch whose write is done; a
        writer error (other than MongoDB being away) is raised here."""
        while self._pending and self._pending[0][0].done():
            future, batch = self._pending.popleft()
            if future.result() and not self._abandoned:
                self._commit(batch)
            else:
                self._abandoned = True

    def _write_until_done(self, batch: Batch, stop: threading.Event) -> bool:
        """The writer thread: retry until written (True) or stopping (False)."""
        backoff = 0.5
        while True:
            try:
                self._write(batch)
            except PyMongoError as exc:
                self._mark_down(exc)
                if stop.wait(backoff):
                    log.warning("sink stopping with an unwritten batch; it is not committed",
                                extra={"records": batch.records})
                    return False
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            self._mark_up()
            return True

    def _write(self, batch: Batch) -> None:
        if not self._indexes_ready:
            self.ensure_indexes()
        started = time.perf_counter()
        for name, collection, docs in (("readings", self.readings, batch.readings),
                                       ("dead_letters", self.dead_letters, batch.dead_letters)):
            for start in range(0, len(docs), _WRITE_CHUNK):
                inserted, duplicates = insert_idempotent(collection,
                                                         docs[start:start + _WRITE_CHUNK])
                metrics.SINK_DOCUMENTS.labels(name).inc(inserted)
                if duplicates:
                    metrics.SINK_DUPLICATES.labels(name).inc(duplicates)
                self.written += inserted
                self.duplicates += duplicates
        metrics.SINK_WRITE_LATENCY.observe(time.perf_counter() - started)
        metrics.SINK_BATCH_SIZE.observe(batch.records)
        self.batches += 1
        self.last_write = time.monotonic()

    def _wait_paused(self, seconds: float) -> None:
        """Keep the group membership alive without taking new records. Pausing
        makes librdkafka drop what it prefetched for the paused partitions and
        fetch again from the application's position on resume, so the poll can
        only return a record of a partition assigned inside it (the rebalance
        callbacks run there). That record is kept and leads the next batch:
        nothing is rewound with seek(), whose failure would have dropped the
        record while the position stayed past it (a committed skip)."""
        try:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True
            msg = self.consumer.poll(seconds)
            self._last_poll = time.monotonic()
            if msg is not None and msg.error() is None and msg.topic() is not None:
                self._carried.append(msg)
        except KafkaException as exc:
            log.warning("pause while waiting for a write failed",
                        extra={"error": str(exc)})
        # The assignment may have changed inside the poll (rebalance callbacks).
        self._resume()

    def _resume(self) -> None:
        try:
            self.consumer.resume(self.consumer.assignment())
            self._paused = False
        except KafkaException as exc:
            log.warning("resume after waiting for a write failed; retried before consuming",
                        extra={"error": str(exc)})

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return  # a replaced consumer closing on its own thread
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned |= keys
        for key in keys:  # fetching restarts at the committed offset
            self._next_offset.pop(key, None)
        log.info("sink partitions assigned", extra={"partitions": sorted(keys)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Still the owner: what is written already is committed. Writes in
        # flight are not waited for: blocking the rebalance for them could
        # outlast max.poll.interval.ms, and their records are simply read again.
        if consumer is not self.consumer:
            return
        self._in_callback = True
        try:
            self._commit_written()
        finally:
            self._in_callback = False
        self._release(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group has moved on: another member may own these already.
        if consumer is self.consumer:
            self._release(partitions, "lost")

    def _release(self, partitions: list[TopicPartition], how: str) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self.released += 1
        dropped = 0
        for _, batch in self._pending:
            for key in keys & batch.offsets.keys():
                del batch.offsets[key]
                dropped += 1
        self._assigned -= keys
        # Their next owner (perhaps this member again) fetches from the committed offset.
        self._carried = [m for m in self._carried
                         if (str(m.topic()), int(m.partition() or 0)) not in keys]
        for key in keys:
            self._next_offset.pop(key, None)
        # A revoke is routine (another member, shutdown); a lost assignment is not.
        log.log(logging.WARNING if how == "lost" else logging.INFO, f"sink partitions {how}",
                extra={"partitions": sorted(keys), "uncommitted_offsets_dropped": dropped})

    def _check_gaps(self, batch: Batch) -> None:
        """A skipped record would otherwise only show as a missing document much later."""
        for key, expected, got in offset_jumps(self._next_offset, batch):
            if got > expected:
                log.warning("sink offset gap", extra={"partition": key, "expected": expected,
                                                      "got": got})
            else:  # harmless: read again (see offset_jumps)
                log.debug("sink offset rewind", extra={"partition": key, "expected": expected,
                                                       "got": got})

    def _commit(self, batch: Batch) -> None:
        # Never for a partition not assigned now: its new owner's position rules.
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()
                   if (t, p) in self._assigned]
        if not offsets:
            return
        consumer = self.consumer
        try:
            if self._in_callback:  # inside the consumer's own call: no other thread may enter
                consumer.commit(offsets=offsets, asynchronous=False)
            else:
                call_within("sink-commit", lambda: consumer.commit(
                    offsets=offsets, asynchronous=False), _COMMIT_HANG_S)
        except KafkaCallHung:
            self._replace_consumer()
        except KafkaException as exc:
            # Partitions moved to another member mid-batch: it rereads them,
            # and the duplicate-key no-ops make that harmless.
            log.warning("offset commit failed; records will be read again",
                        extra={"error": str(exc)})

    def _replace_consumer(self) -> None:
        """A new member reads everything not committed again (duplicate-key
        no-ops); the old one closes, and leaves the group, whenever its hung
        call returns."""
        log.error("kafka commit hung; replacing the sink's consumer",
                  extra={"after_s": _COMMIT_HANG_S, "has_factory": bool(self._make_consumer)})
        if self._make_consumer is None:
            raise ServiceUnavailable("raw sink: kafka commit hung")
        keys = set(self._assigned).union(*(batch.offsets for _, batch in self._pending))
        self._release([TopicPartition(t, p) for t, p in keys], "abandoned")
        self._carried.clear()
        old, self.consumer = self.consumer, self._make_consumer()
        abandon(old)
        self.replaced += 1
        self.subscribe()

    def _mark_down(self, exc: PyMongoError) -> None:
        if self.mongo_up:
            self.mongo_up = False
            self.retrying_since = time.monotonic()
            metrics.SINK_MONGO_UP.set(0)
            log.error("mongodb write failed; holding the batch and retrying",
                      extra={"error": str(exc)[:500]})

    def _mark_up(self) -> None:
        if not self.mongo_up and self.retrying_since is not None:
            log.info("mongodb writes resumed",
                     extra={"down_s": round(time.monotonic() - self.retrying_since, 1)})
        self.mongo_up, self.retrying_since = True, None
        metrics.SINK_MONGO_UP.set(1)

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < _LAG_INTERVAL_S:
            return
        self._last_lag = now
        lag = 0
        try:
            for tp in self.consumer.position(self.consumer.assignment()):
                # Cached: the high watermark each fetch brings back, no broker round trip.
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                lag += max(0, high - tp.offset) if tp.offset >= 0 else 0
        except KafkaException:
            return  # lag is a nicety; Kafka trouble shows elsewhere
        metrics.SINK_LAG.set(lag)
