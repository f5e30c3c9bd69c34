"""`AnalyticsStage`: the worker-loop stage that runs the pure analytics engine
on each batch and writes what it produced.

Exactness rests on one write: after the window and statistics outputs are
durable (MongoDB upserts by `_id`, Kafka flushed), the partition's state
document - holding the last applied offset - is replaced whole. A crash before
it replays the batch and rewrites the same outputs; a crash after it skips the
batch by offset. The producer must therefore NOT be the loop's transactional
one: a window must reach Kafka before the state that says it was emitted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pymongo.database import Database
from pymongo.errors import PyMongoError

from contracts.collections import insert_idempotent, replace_upsert
from contracts.errors import EdgepipeError, ServiceUnavailable
from contracts.settings import Settings
from model_worker.analytics import metrics
from model_worker.analytics.engine import AnalyticsEngine, Emissions, WindowPolicy
from model_worker.analytics.state import PartitionState
from model_worker.stage import ConsumedBatch

log = logging.getLogger(__name__)

WINDOWS_COLLECTION = "windows"
STATS_COLLECTION = "stats"
STATE_COLLECTION = "analytics_state"
FLUSH_TIMEOUT_S = 30.0
LATE_LOG_EVERY_S = 10.0


class AnalyticsStage:
    name = "analytics"

    def __init__(self, settings: Settings, producer: Producer, db: Database[dict[str, Any]],
                 mqtt_client: mqtt.Client | None = None) -> None:
        self.engine = AnalyticsEngine(WindowPolicy.from_settings(settings))
        self.producer = producer
        self.windows = db[WINDOWS_COLLECTION]
        self.stats = db[STATS_COLLECTION]
        self.states = db[STATE_COLLECTION]
        self.mqtt = mqtt_client
        self.windows_topic = settings.kafka_topic_windows
        self.mqtt_window_topic = settings.analytics_mqtt_window_topic
        self.mqtt_stats_topic = settings.analytics_mqtt_stats_topic
        self.state_prefix = f"{settings.worker_group}|{settings.kafka_topic_readings}"
        self._late_unlogged = 0
        self._late_logged_at = 0.0

    def state_id(self, partition: int) -> str:
        return f"{self.state_prefix}|{partition}"

    def handle(self, batch: ConsumedBatch, now_ns: int) -> None:
        touched = set(batch.partitions)
        try:
            self._load(p for p in touched if p not in self.engine.partitions)
            out = self.engine.apply(batch.readings, batch.partitions, batch.offsets, now_ns)
            self._write(out)
        except Exception as exc:
            # Memory may be ahead of what was saved: reload from the state
            # documents when the batch comes again.
            self._forget(touched)
            if isinstance(exc, EdgepipeError):
                raise
            raise ServiceUnavailable(f"analytics batch not written: {exc}") from exc
        self._count(out)

    def tick(self, now_ns: int) -> None:
        out = self.engine.idle_close(now_ns)
        if out.windows:
            try:
                self._write(out)
            except Exception as exc:  # the idle windows are emitted again after a reload
                self._forget(out.partitions)
                log.error("idle windows not written", extra={"error": str(exc)[:300]})
                return
            self._count(out)
        series, windows, event_ids = self.engine.state_size()
        metrics.STATE_SERIES.set(series)
        metrics.STATE_WINDOWS.set(windows)
        metrics.STATE_EVENT_IDS.set(event_ids)

    def assigned(self, partitions: list[int]) -> None:
        self._load(partitions)

    def revoked(self, partitions: list[int]) -> None:
        self._forget(partitions)  # saved after every batch: nothing to flush

    def close(self) -> None:
        self.producer.flush(FLUSH_TIMEOUT_S)

    def _load(self, partitions: Iterable[int]) -> None:
        now_ns = time.time_ns()
        for partition in partitions:
            try:
                doc = self.states.find_one({"_id": self.state_id(partition)})
            except PyMongoError as exc:
                raise ServiceUnavailable(f"cannot load analytics state: {exc}") from exc
            state = (PartitionState(partition) if doc is None
                     else PartitionState.from_document(doc, now_ns))
            self.engine.partitions[partition] = state
            log.info("analytics state loaded", extra={
                "partition": partition, "applied_offset": state.applied_offset,
                "series": len(state.series)})

    def _forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.engine.partitions.pop(partition, None)

    def _write(self, out: Emissions) -> None:
        started = time.perf_counter()
        window_docs = [{**w.to_document(), "closed_by": why}
                       for w, why in zip(out.windows, out.closed_by, strict=True)]
        stats_docs = [state.stats_document() for state in out.stats]
        # A first emission is an insert (a replay rewrites the same content, so a
        # duplicate key is success); only revisions replace. Upserts cost FerretDB
        # a round of work per document, inserts go in one batch.
        first = [d for d in window_docs if d["revision"] == 0]
        revised = [d for d in window_docs if d["revision"] != 0]
        try:
            insert_idempotent(self.windows, first)
            replace_upsert(self.windows, revised)
            replace_upsert(self.stats, stats_docs)
        except PyMongoError as exc:
            raise ServiceUnavailable(f"MongoDB analytics write: {exc}") from exc
        self._produce(window_docs)
        self._publish(window_docs, stats_docs)
        try:
            for partition in out.partitions:
                doc = self.engine.partitions[partition].to_document(self.state_id(partition))
                self.states.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise ServiceUnavailable(f"MongoDB analytics state write: {exc}") from exc
        metrics.WRITE_SECONDS.observe(time.perf_counter() - started)

    def _produce(self, window_docs: list[dict[str, Any]]) -> None:
        if not window_docs:
            return
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(error)

        for doc in window_docs:
            payload = orjson.dumps(doc)
            while True:
                try:
                    self.producer.produce(self.windows_topic, payload,
                                          key=doc["device_id"].encode(), on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    self.producer.poll(0.05)
                except KafkaException as exc:
                    raise ServiceUnavailable(f"Kafka produce {self.windows_topic}: {exc}") from exc
        pending = self.producer.flush(FLUSH_TIMEOUT_S)
        if pending or failures:
            raise ServiceUnavailable(f"Kafka {self.windows_topic}: {pending} windows undelivered"
                                     f", errors {[str(f) for f in failures[:3]]}")

    def _publish(self, window_docs: list[dict[str, Any]],
                 stats_docs: list[dict[str, Any]]) -> None:
        """Live push for dashboards, QoS 1 retained, not waited for: the durable
        copies are in MongoDB and Kafka, and a stalled broker must not stall them."""
        if self.mqtt is None:
            return
        for template, docs in ((self.mqtt_window_topic, window_docs),
                               (self.mqtt_stats_topic, stats_docs)):
            for doc in docs:
                topic = template.format(device_id=doc["device_id"], sensor=doc["sensor"])
                self.mqtt.publish(topic, orjson.dumps(doc), qos=1, retain=True)

    def _count(self, out: Emissions) -> None:
        for window, why in zip(out.windows, out.closed_by, strict=True):
            metrics.WINDOWS_EMITTED.labels(size_s=str(window.size_s), closed_by=why).inc()
            if window.revision:
                metrics.WINDOW_REVISIONS.inc()
                log.info("window revised", extra={"window": window.id,
                                                  "revision": window.revision,
                                                  "count": window.moments.count})
            elif why == "idle":
                log.info("window closed by idle timeout", extra={"window": window.id})
        metrics.DUPLICATES.inc(out.duplicates)
        metrics.REPLAYED.inc(out.replayed)
        metrics.INVALID_VALUES.inc(out.invalid)
        if out.invalid:
            log.warning("non-finite values skipped", extra={"count": out.invalid})
        if out.too_late:
            metrics.LATE_DROPPED.inc(len(out.too_late))
            self._late_unlogged += len(out.too_late)
            now = time.monotonic()
            if now - self._late_logged_at >= LATE_LOG_EVERY_S:
                example = out.too_late[0]
                log.warning("readings later than the allowed lateness, not applied", extra={
                    "count": self._late_unlogged, "example_event_id": example.event_id,
                    "example_device": example.device_id, "example_sensor": example.sensor})
                self._late_unlogged, self._late_logged_at = 0, now
