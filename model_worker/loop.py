"""The worker's Kafka loop: poll a micro-batch, decode it, run every stage,
then commit. Offsets are committed inside a Kafka transaction together with
everything the stages produced to Kafka (`send_offsets_to_transaction`), so
for read_committed consumers the `analytics` topic holds each result once,
also across a crash. A failed batch is aborted and the consumer rewound to its
first offsets, so it is consumed again; the loop never drops it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pymongo.database import Database

from contracts.errors import EdgepipeError
from model_worker import metrics
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
TRANSACTION_TIMEOUT_S = 60.0


class WorkerLoop:
    def __init__(self, consumer: Consumer, producer: Producer, stages: Sequence[Stage],
                 db: Database[dict[str, Any]], *, topic: str, dlq_topic: str,
                 batch_size: int, batch_wait_s: float, score_fields: dict[str, str]) -> None:
        self.consumer = consumer
        self.producer = producer
        self.stages = list(stages)
        self.dead_letters = db[DEAD_LETTERS_COLLECTION]
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.score_fields = score_fields
        self.committed_events = 0
        self._failures_in_row = 0
        self._summary = {"consumed": 0, "committed": 0, "dead_letters": 0, "aborted": 0}

    def run(self, stop: threading.Event) -> None:
        self.producer.init_transactions(TRANSACTION_TIMEOUT_S)
        self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)
        last_tick = last_summary = time.monotonic()
        while not stop.is_set():
            messages = self.consumer.consume(num_messages=self.batch_size,
                                             timeout=self.batch_wait_s)
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
        self.close()

    def _process(self, messages: list[Message], stop: threading.Event) -> None:
        records: list[KafkaRecord] = []
        for message in messages:
            error = message.error()
            if error is not None:
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
        self.producer.send_offsets_to_transaction(
            self._next_offsets(records), self.consumer.consumer_group_metadata(),
            TRANSACTION_TIMEOUT_S)
        self.producer.commit_transaction(TRANSACTION_TIMEOUT_S)
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)

    def _next_offsets(self, records: list[KafkaRecord]) -> list[TopicPartition]:
        last: dict[int, int] = {}
        for record in records:
            last[record.partition] = max(last.get(record.partition, -1), record.offset)
        return [TopicPartition(self.topic, p, o + 1) for p, o in sorted(last.items())]

    def _abort(self, records: list[KafkaRecord], exc: Exception, stop: threading.Event) -> None:
        self._failures_in_row += 1
        self._summary["aborted"] += 1
        if _is_fatal(exc):
            raise exc  # e.g. fenced by a newer instance: this process must stop
        log.error("batch failed, aborted, will be consumed again",
                  extra={"error": str(exc)[:500], "records": len(records),
                         "attempt": self._failures_in_row},
                  exc_info=not isinstance(exc, EdgepipeError | KafkaException))
        try:
            self.producer.abort_transaction(TRANSACTION_TIMEOUT_S)
        except KafkaException as abort_exc:
            if _is_fatal(abort_exc):
                raise abort_exc from exc
            log.warning("abort_transaction failed", extra={"error": str(abort_exc)})
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
        numbers = [p.partition for p in partitions]
        log.info("partitions assigned", extra={"partitions": numbers})
        for stage in self.stages:
            stage.assigned(numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [p.partition for p in partitions]
        log.info("partitions revoked", extra={"partitions": numbers})
        for stage in self.stages:
            stage.revoked(numbers)

    def _log_summary(self, elapsed_s: float) -> None:
        self._update_lag()
        log.info("summary", extra={**self._summary, "interval_s": round(elapsed_s, 1),
                                   "events_per_s": round(self._summary["committed"] / elapsed_s)})
        self._summary = dict.fromkeys(self._summary, 0)

    def _update_lag(self) -> None:
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
        self.consumer.close()
        self.producer.flush(10)


def _is_fatal(exc: Exception) -> bool:
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    return isinstance(error, KafkaError) and error.fatal()
