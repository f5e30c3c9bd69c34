"""`AnalyticsStage`: the worker-loop stage that runs the pure analytics engine
on each batch and writes what it produced.

Per batch, the closed windows go out on MQTT (live) and are queued for Kafka,
and the changed statistics are pushed on MQTT at most every
ANALYTICS_STATS_PUSH_INTERVAL_S (latest snapshot per series, `push.py`).
Every ANALYTICS_CHECKPOINT_INTERVAL_S a checkpoint writes the windows since the
last one to MongoDB (and the statistics changed since they were last written,
every ANALYTICS_STATS_INTERVAL_S: an upsert per series is FerretDB's dearest
write), flushes Kafka, and only then replaces each changed partition's state
document - holding its last applied offset (`checkpoint.py`). A crash loses at
most what came after the last checkpoint: on start the state is loaded, readings at
offsets up to it are skipped, and the readings between it and the first offset
the loop delivers (committed by the loop meanwhile) are read again from Kafka
(`replay.py`), so windows and statistics come out as if nothing had happened.
The producer must NOT be the loop's transactional one: a window must reach
Kafka before the state that says it was emitted, whatever the loop's
transaction does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, Producer
from pymongo.database import Database
from pymongo.errors import PyMongoError

from contracts.errors import EdgepipeError, ServiceUnavailable
from contracts.mqtt_publish import publish_many
from contracts.settings import Settings
from model_worker.analytics import metrics
from model_worker.analytics.checkpoint import Checkpoint, CheckpointWriter, Pending
from model_worker.analytics.engine import AnalyticsEngine, Emissions, WindowPolicy
from model_worker.analytics.metrics import EmissionCounter
from model_worker.analytics.push import StatsPush
from model_worker.analytics.replay import committed_offsets, read_range
from model_worker.analytics.state import FieldState, PartitionState
from model_worker.stage import ConsumedBatch

log = logging.getLogger(__name__)

WINDOWS_COLLECTION = "windows"
STATS_COLLECTION = "stats"
STATE_COLLECTION = "analytics_state"


class AnalyticsStage:
    name = "analytics"

    def __init__(self, settings: Settings, producer: Producer, db: Database[dict[str, Any]],
                 mqtt_client: mqtt.Client | None = None, *,
                 replay_consumer: Consumer | None = None) -> None:
        self.engine = AnalyticsEngine(WindowPolicy.from_settings(settings))
        self.states = db[STATE_COLLECTION]
        self.writer = CheckpointWriter(db[WINDOWS_COLLECTION], db[STATS_COLLECTION],
                                       self.states, producer, settings.kafka_topic_windows)
        self.mqtt = mqtt_client
        self.replay = replay_consumer
        # Without a consumer to re-read Kafka, the state must never fall behind
        # the loop's commits: a synchronous checkpoint every batch.
        self.interval_s = settings.analytics_checkpoint_interval_s if replay_consumer else 0.0
        self.stats_interval_s = settings.analytics_stats_interval_s
        self.score_fields = settings.worker_score_fields
        self.topic = settings.kafka_topic_readings
        self.replay_chunk = settings.worker_batch_size
        self.mqtt_window_topic = settings.analytics_mqtt_window_topic
        self.mqtt_stats_topic = settings.analytics_mqtt_stats_topic
        self.stats_push = StatsPush(settings.analytics_stats_push_interval_s, self._publish_stats)
        self.state_prefix = f"{settings.worker_group}|{settings.kafka_topic_readings}"
        self.pending = Pending()
        # Series whose statistics are not yet written to MongoDB, held over checkpoints
        # until the stats interval is up (by series id); the states already written may
        # be ahead of iot.stats, so a loaded state queues all its series again (`_load`).
        self.held_stats: dict[str, FieldState] = {}
        self._stats_written_at = time.monotonic()
        self._behind: set[int] = set()  # loaded from a checkpoint: may lag the loop's commits
        self._fresh: set[int] = set()  # no checkpoint yet: starts where the loop starts
        self._checkpointed_at = time.monotonic()
        self.counter = EmissionCounter()

    def state_id(self, partition: int) -> str:
        return f"{self.state_prefix}|{partition}"

    def handle(self, batch: ConsumedBatch, now_ns: int) -> None:
        try:
            self.writer.check()
            self._load(p for p in set(batch.partitions) if p not in self.engine.partitions)
            first = _first_offsets(batch)
            self._start_fresh(first)
            self._catch_up(batch.topic, first, now_ns)
            out = self.engine.apply(batch.readings, batch.partitions, batch.offsets, now_ns)
            self._record(out)
            if self._due():
                self._checkpoint(wait=self.interval_s == 0)
        except Exception as exc:
            # Memory may be ahead of what was saved: start again from the last
            # checkpoint when the batch comes again, as after a crash.
            self._reset()
            if isinstance(exc, EdgepipeError):
                raise
            raise ServiceUnavailable(f"analytics batch not written: {exc}") from exc
        self.counter.count(out)

    def tick(self, now_ns: int) -> None:
        try:
            self.writer.check()
            self.stats_push.push_if_due(time.monotonic())
            out = self.engine.idle_close(now_ns)
            if out.windows:
                self._record(out)
                self.counter.count(out)
            if self._due():
                self._checkpoint(wait=self.interval_s == 0)
        except Exception as exc:  # the same windows come again from the last checkpoint
            self._reset()
            log.error("analytics checkpoint failed", extra={"error": str(exc)[:300]})
        series, windows, event_ids = self.engine.state_size()
        metrics.STATE_SERIES.set(series)
        metrics.STATE_WINDOWS.set(windows)
        metrics.STATE_EVENT_IDS.set(event_ids)

    def assigned(self, partitions: list[int]) -> None:
        """Load the partitions' state and re-read at once what the loop committed
        beyond it: a sensor that went quiet before a crash must not wait for new
        readings to get its windows. On failure the first batch re-reads instead."""
        try:
            self._load(p for p in partitions if p not in self.engine.partitions)
            behind = sorted(self._behind & set(partitions))
            if self.replay is not None and behind:
                committed = committed_offsets(self.replay, self.topic, behind)
                self._catch_up(self.topic, committed, time.time_ns())
        except Exception as exc:  # never out of the rebalance callback
            log.warning("analytics load on assignment failed, retried on the first batch",
                        extra={"error": str(exc)[:300]})
            self._reset()

    def revoked(self, partitions: list[int]) -> None:
        """Checkpoint before letting go, so the next owner has little to re-read."""
        try:
            self.flush()
        except Exception as exc:
            self._reset()
            log.error("analytics checkpoint on revoke failed", extra={"error": str(exc)[:300]})
        self._forget(partitions)

    def flush(self) -> None:
        """A synchronous checkpoint of everything applied so far, statistics included;
        the statistics held back from MQTT are pushed."""
        self.stats_push.push()
        if self.pending or self.held_stats:
            self._checkpoint(wait=True, all_stats=True)
        else:
            self.writer.wait()

    def close(self) -> None:
        try:
            self.flush()
        except Exception as exc:
            log.error("analytics checkpoint on close failed", extra={"error": str(exc)[:300]})
        self.writer.close()

    def _load(self, partitions: Iterable[int]) -> None:
        now_ns = time.time_ns()
        for partition in partitions:
            try:
                doc = self.states.find_one({"_id": self.state_id(partition)})
            except PyMongoError as exc:
                raise ServiceUnavailable(f"cannot load analytics state: {exc}") from exc
            if doc is None:
                state = PartitionState(partition)
                self._fresh.add(partition)
            else:
                state = PartitionState.from_document(doc, now_ns)
                self._behind.add(partition)
            self.engine.partitions[partition] = state
            # iot.stats may lag this state (statistics are written less often than
            # states): write all of the partition's again with the next statistics.
            self.held_stats.update(
                (f.series_id, f) for series in state.series.values()
                for f in series.fields.values())
            log.info("analytics state loaded", extra={
                "partition": partition, "applied_offset": state.applied_offset,
                "series": len(state.series)})

    def _start_fresh(self, first: dict[int, int]) -> None:
        """A partition without a checkpoint starts at the loop's first offset:
        saved at once, so a crash before the first checkpoint re-reads from there."""
        for partition in self._fresh & first.keys():
            state = self.engine.partitions[partition]
            state.applied_offset = max(state.applied_offset, first[partition] - 1)
            doc = state.to_document(self.state_id(partition))
            try:
                self.states.replace_one({"_id": doc["_id"]}, doc, upsert=True)
            except PyMongoError as exc:
                raise ServiceUnavailable(f"MongoDB analytics state write: {exc}") from exc
            self._fresh.discard(partition)

    def _catch_up(self, topic: str, first: dict[int, int], now_ns: int) -> None:
        """Apply the readings from each partition's applied offset up to `first`,
        the offset the loop continues from."""
        for partition in sorted(self._behind & first.keys()):
            start = self.engine.partitions[partition].applied_offset + 1
            if self.replay is not None and first[partition] > start:
                log.info("analytics re-reading readings since its checkpoint", extra={
                    "partition": partition, "from_offset": start, "to_offset": first[partition]})
                for chunk in read_range(self.replay, topic, partition, start, first[partition],
                                        self.score_fields, self.replay_chunk):
                    out = self.engine.apply(chunk.readings, chunk.partitions, chunk.offsets,
                                            now_ns)
                    self._record(out)
                    self.counter.count(out)
                    metrics.CAUGHT_UP.inc(len(chunk))
            self._behind.discard(partition)

    def _record(self, out: Emissions) -> None:
        """Publish (MQTT), queue (Kafka) and keep for the next checkpoint (MongoDB)."""
        window_docs = [w.to_document() for w in out.windows]
        for doc, why in zip(window_docs, out.closed_by, strict=True):
            doc["closed_by"] = why
        # One JSON encoding per window serves Kafka and MQTT.
        payloads = [orjson.dumps(doc) for doc in window_docs]
        self.writer.produce([(d["device_id"].encode(), p)
                             for d, p in zip(window_docs, payloads, strict=True)])
        self._publish(self.mqtt_window_topic, window_docs, payloads)
        # Statistics documents are built when pushed or written (the latest state wins).
        self.stats_push.offer(out.stats, time.monotonic())
        self.pending.windows.update((d["_id"], d) for d in window_docs)
        self.pending.stats.update((f.series_id, f) for f in out.stats)
        self.pending.partitions |= out.partitions

    def _due(self) -> bool:
        now = time.monotonic()
        return (bool(self.pending) or (bool(self.held_stats) and self._stats_due(now))) and (
            now - self._checkpointed_at >= self.interval_s)

    def _stats_due(self, now: float) -> bool:
        return self.interval_s == 0 or now - self._stats_written_at >= self.stats_interval_s

    def _checkpoint(self, *, wait: bool, all_stats: bool = False) -> None:
        """`all_stats`: write the held statistics too, whenever they were last written."""
        pending, self.pending = self.pending, Pending()
        states = [self.engine.partitions[p].snapshot(self.state_id(p))
                  for p in sorted(pending.partitions) if p in self.engine.partitions]
        now = self._checkpointed_at = time.monotonic()
        self.held_stats.update(pending.stats)
        stats: list[dict[str, Any]] = []
        if all_stats or self._stats_due(now):
            # built now, beside the state snapshots: both say the same readings
            stats = [f.stats_document() for f in self.held_stats.values()]
            self.held_stats = {}
            self._stats_written_at = now
        self.writer.submit(Checkpoint(list(pending.windows.values()), stats, states), wait=wait)

    def _reset(self) -> None:
        """Forget everything not checkpointed; it is recomputed from the last checkpoint.
        Held statistics still go out, as their series stand: a replay of the same
        readings ends at the same ones."""
        self.stats_push.push()
        try:
            self.writer.wait()
        except Exception as exc:
            log.warning("analytics checkpoint failed", extra={"error": str(exc)[:300]})
        self.pending = Pending()
        self.held_stats = {}  # recomputed too: a loaded state queues its statistics
        self._forget(list(self.engine.partitions))

    def _forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.engine.partitions.pop(partition, None)
            self._behind.discard(partition)
            self._fresh.discard(partition)

    def _publish_stats(self, docs: list[dict[str, Any]]) -> None:
        self._publish(self.mqtt_stats_topic, docs, [orjson.dumps(doc) for doc in docs])

    def _publish(self, template: str, docs: list[dict[str, Any]],
                 payloads: list[bytes]) -> None:
        """Live push for dashboards, QoS 1 retained, not waited for: the durable
        copies are in MongoDB and Kafka, and a stalled broker must not stall them."""
        if self.mqtt is None:
            return
        # One write for all of them; the client logs refusals (contracts.mqtt_publish).
        publish_many(self.mqtt, [
            (template.format(device_id=doc["device_id"], sensor=doc["sensor"]), payload)
            for doc, payload in zip(docs, payloads, strict=True)], qos=1, retain=True)


def _first_offsets(batch: ConsumedBatch) -> dict[int, int]:
    first: dict[int, int] = {}
    for partition, offset in zip(batch.partitions, batch.offsets, strict=True):
        if offset < first.get(partition, offset + 1):
            first[partition] = offset
    return first
