"""The worker's Kafka loop: poll a micro-batch, decode it, run every stage,
then commit. Offsets are committed inside a Kafka transaction together with
everything the stages produced to Kafka (`send_offsets_to_transaction`), so
for read_committed consumers the `analytics` topic holds each result once,
also across a crash. A failed batch is aborted and the consumer rewound to its
first offsets, so it is consumed again; the loop never drops it.

When a client is unusable for good (fatal error, fenced, unknown member; see
`kafka_session`) the loop aborts, replaces both clients and resumes from the
committed offsets; it reports not ready meanwhile, and exits with
KafkaRebuildFailed when rebuilding does not succeed within bounds."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pymongo.database import Database

from contracts.errors import EdgepipeError
from model_worker import metrics
from model_worker.kafka_session import KafkaSession, rebuild_reason_of
from model_worker.scoring import DeadLetter, KafkaRecord, decode_records
from model_worker.sinks import (
    dead_letter_document,
    dead_letter_json,
    produce_all,
    write_documents,
)
from model_worker.stage import ConsumedBatch, Stage

log = logging.getLogger(__name__)

DEAD_LETTERS_COLLECTION = "dead_letters"
SUMMARY_EVERY_S = 30.0
BACKOFF_MAX_S = 10.0
# The broker aborts (and fences) a transaction open longer than this
# (transaction.timeout.ms, set from it in __main__). A batch's transaction is
# open from its first write to its commit: MQTT (30 s at most) plus MongoDB
# plus the commit, well under it in normal operation; one that outlives it,
# e.g. across a Kafka outage, ends in a fenced producer, which is rebuilt.
TRANSACTION_TIMEOUT_S = 60.0
# Each commit, send-offsets or abort call may take this long (then fails as
# retriable and the batch is aborted); they take milliseconds when Kafka is up.
# Short, so a batch stuck on an unreachable Kafka holds nothing up for long.
TXN_CALL_TIMEOUT_S = 15.0
# Aborting before a rebuild is a courtesy (the new producer aborts what the
# old one left open), so it may not hold the rebuild up for long.
REBUILD_ABORT_S = 5.0


class WorkerLoop:
    def __init__(self, make_consumer: Callable[[], Consumer],
                 make_producer: Callable[[], Producer], stages: Sequence[Stage],
                 db: Database[dict[str, Any]], *, topic: str, dlq_topic: str,
                 batch_size: int, batch_wait_s: float, score_fields: dict[str, str],
                 producer: Producer | None = None) -> None:
        """`producer`, if given, is the first transactional producer (the one
        the stages were built with); later ones come from `make_producer`."""
        self.session = KafkaSession(make_consumer, make_producer, self._subscribe,
                                    first_producer=producer)
        self._stage_producer = producer
        self.stages = list(stages)
        self.dead_letters = db[DEAD_LETTERS_COLLECTION]
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.score_fields = score_fields
        self.committed_events = 0
        self._failures_in_row = 0
        self._assigned: set[int] = set()
        self._summary = {"consumed": 0, "committed": 0, "dead_letters": 0, "aborted": 0,
                         "rebuilds": 0}

    @property
    def consumer(self) -> Consumer:
        assert self.session.consumer is not None, "no Kafka consumer outside run()"
        return self.session.consumer

    @property
    def producer(self) -> Producer:
        assert self.session.producer is not None, "no Kafka producer outside run()"
        return self.session.producer

    def kafka_status(self) -> bool | str:
        """For /ready: True, or why the Kafka clients are not usable now."""
        if not self.session.rebuilding and self.session.producer is not None:
            return True
        doing = "rebuilding" if self.session.rebuilds else "building"
        return f"{doing} Kafka clients (attempt {self.session.build_attempt})"

    def run(self, stop: threading.Event) -> None:
        try:
            if not self._open(stop):
                return
            last_tick = last_summary = time.monotonic()
            while not stop.is_set():
                try:
                    messages = self.consumer.consume(num_messages=self.batch_size,
                                                     timeout=self.batch_wait_s)
                except KafkaException as exc:  # fatal consumer errors may also be raised
                    messages = []
                    if not self._maybe_rebuild(exc, stop):
                        log.warning("kafka consume failed", extra={"error": str(exc)[:300]})
                if messages:
                    self._process(messages, stop)
                now = time.monotonic()
                if now - last_tick >= 1.0:
                    for stage in self.stages:
                        stage.tick(time.time_ns())
                    last_tick = now
                if now - last_summary >= SUMMARY_EVERY_S:
                    self._log_summary(now - last_summary)
                    last_summary = now
        finally:
            self.close()

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe([self.topic], on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _open(self, stop: threading.Event) -> bool:
        self.session.rebuilding = True
        opened = self.session.open(stop)
        if opened:
            # Stages that write into the loop's transaction (scoring) hold its
            # producer: hand them the new one. The analytics stage has its own.
            for stage in self.stages:
                if (self._stage_producer is not None
                        and getattr(stage, "producer", None) is self._stage_producer):
                    stage.producer = self.producer  # type: ignore[attr-defined]
            self._stage_producer = self.producer
            self.session.rebuilding = False
        return opened

    def _maybe_rebuild(self, exc: BaseException | KafkaError, stop: threading.Event) -> bool:
        """Rebuilds the clients when `exc` says they are unusable; False (and
        nothing done) when the error is one to retry on the same clients."""
        reason = rebuild_reason_of(exc)
        if reason is None:
            return False
        self._rebuild(reason, str(exc), stop)
        return True

    def _rebuild(self, reason: str, detail: str, stop: threading.Event) -> None:
        wait_s = self.session.note_rebuild()  # raises KafkaRebuildFailed beyond the bound
        self.session.rebuilding = True
        metrics.KAFKA_REBUILDS.labels(reason=reason).inc()
        self._summary["rebuilds"] += 1
        log.error("kafka clients unusable; rebuilding them, resuming from committed offsets",
                  extra={"reason": reason, "error": detail[:300], "rebuild": self.session.rebuilds,
                         "backoff_s": wait_s, "partitions": sorted(self._assigned)})
        self.session.abort_quietly(REBUILD_ABORT_S)
        self.session.discard()
        # The old consumer's partitions are gone with it: stages drop their
        # state and reload it when the new consumer is assigned.
        self._revoke_stages(sorted(self._assigned))
        self._failures_in_row = 0
        if not stop.wait(wait_s):
            self._open(stop)

    def _process(self, messages: list[Message], stop: threading.Event) -> None:
        records: list[KafkaRecord] = []
        for message in messages:
            error = message.error()
            if error is not None:
                # Whatever else this consume returned is uncommitted: after a
                # rebuild the new consumer reads it again from the committed offsets.
                if self._maybe_rebuild(error, stop):
                    return
                log.warning("kafka consume error", extra={"error": str(error)})
                continue
            records.append(KafkaRecord(message.value(), message.partition() or 0,
                                       message.offset() or 0))
        if not records:
            return
        metrics.CONSUMED.inc(len(records))
        metrics.BATCH_SIZE.observe(len(records))
        self._summary["consumed"] += len(records)
        batch, dead = decode_records(self.topic, records, self.score_fields)
        try:
            self._write_and_commit(batch, dead, records)
        except Exception as exc:  # any failed write or stage: abort and consume again
            self._abort(records, exc, stop)
            return
        if self._failures_in_row:
            log.info("writes recovered, batch committed",
                     extra={"failed_attempts": self._failures_in_row})
        self._failures_in_row = 0
        self.committed_events += len(records)
        self._summary["committed"] += len(records)
        self._summary["dead_letters"] += len(dead)
        for letter in dead:
            metrics.DEAD_LETTERS.labels(reason=letter.reason).inc()

    def _write_and_commit(self, batch: ConsumedBatch, dead: list[DeadLetter],
                          records: list[KafkaRecord]) -> None:
        now_ns = time.time_ns()
        self.producer.begin_transaction()
        if dead:
            documents = [dead_letter_document(d, self.topic, now_ns) for d in dead]
            produce_all(self.producer, self.dlq_topic,
                        [(b"model_worker", dead_letter_json(doc)) for doc in documents])
            write_documents(self.dead_letters, documents)
            for letter in dead:
                log.warning("dead letter", extra={"reason": letter.reason,
                                                  "detail": letter.error[:300]})
        if batch.readings:
            for stage in self.stages:
                try:
                    stage.handle(batch, now_ns)
                except Exception:
                    metrics.BATCH_FAILURES.labels(stage=stage.name).inc()
                    raise
        started = time.perf_counter()
        producer, offsets = self.producer, self._next_offsets(records)
        group = self.consumer.consumer_group_metadata()
        # Under the session's watchdog: these two can hang past their timeout.
        self.session.call("send_offsets_to_transaction",
                          lambda: producer.send_offsets_to_transaction(offsets, group,
                                                                       TXN_CALL_TIMEOUT_S),
                          TXN_CALL_TIMEOUT_S)
        self.session.call("commit_transaction",
                          lambda: producer.commit_transaction(TXN_CALL_TIMEOUT_S),
                          TXN_CALL_TIMEOUT_S)
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)

    def _next_offsets(self, records: list[KafkaRecord]) -> list[TopicPartition]:
        last: dict[int, int] = {}
        for record in records:
            last[record.partition] = max(last.get(record.partition, -1), record.offset)
        return [TopicPartition(self.topic, p, o + 1) for p, o in sorted(last.items())]

    def _abort(self, records: list[KafkaRecord], exc: Exception, stop: threading.Event) -> None:
        self._summary["aborted"] += 1
        if self._maybe_rebuild(exc, stop):
            return  # the new consumer starts at the committed offsets: no rewind needed
        self._failures_in_row += 1
        log.error("batch failed, aborted, will be consumed again",
                  extra={"error": str(exc)[:500], "records": len(records),
                         "attempt": self._failures_in_row},
                  exc_info=not isinstance(exc, EdgepipeError | KafkaException))
        producer = self.producer
        try:
            self.session.call("abort_transaction",
                              lambda: producer.abort_transaction(TXN_CALL_TIMEOUT_S),
                              TXN_CALL_TIMEOUT_S)
        except (KafkaException, EdgepipeError) as abort_exc:
            # A producer that cannot abort cannot begin the next transaction
            # either: replace it (its successor aborts this one).
            reason = rebuild_reason_of(abort_exc) or "abort_failed"
            self._rebuild(reason, str(abort_exc), stop)
            return
        first: dict[int, int] = {}
        for record in records:
            first[record.partition] = min(first.get(record.partition, record.offset),
                                          record.offset)
        for partition, offset in first.items():
            # A partition no longer ours: its new owner starts at the committed offset.
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(self.topic, partition, offset))
        stop.wait(min(BACKOFF_MAX_S, 0.5 * 2 ** min(self._failures_in_row - 1, 5)))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.session.consumer:
            return  # a replaced consumer's late callback
        numbers = [p.partition for p in partitions]
        log.info("partitions assigned", extra={"partitions": numbers})
        self._assigned.update(numbers)
        for stage in self.stages:
            stage.assigned(numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is self.session.consumer:
            log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})
            self._revoke_stages([p.partition for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The session expired (e.g. Kafka away longer than session.timeout.ms):
        # another member may own them already, so their state is dropped as on revoke.
        if consumer is self.session.consumer:
            log.warning("partitions lost", extra={"partitions": [p.partition for p in partitions]})
            self._revoke_stages([p.partition for p in partitions])

    def _revoke_stages(self, numbers: list[int]) -> None:
        numbers = [n for n in numbers if n in self._assigned]
        self._assigned.difference_update(numbers)
        if not numbers:
            return
        for stage in self.stages:
            stage.revoked(numbers)

    def _log_summary(self, elapsed_s: float) -> None:
        self._update_lag()
        log.info("summary", extra={**self._summary, "interval_s": round(elapsed_s, 1),
                                   "events_per_s": round(self._summary["committed"] / elapsed_s)})
        self._summary = dict.fromkeys(self._summary, 0)

    def _update_lag(self) -> None:
        if self.session.consumer is None:
            return
        try:
            for position in self.consumer.position(self.consumer.assignment()):
                _, high = self.consumer.get_watermark_offsets(position, timeout=2, cached=False)
                if position.offset >= 0:
                    metrics.CONSUMER_LAG.labels(partition=str(position.partition)).set(
                        max(high - position.offset, 0))
        except KafkaException as exc:
            log.warning("consumer lag unknown", extra={"error": str(exc)})

    def close(self) -> None:
        for stage in self.stages:
            stage.close()
        self.session.close(10)
