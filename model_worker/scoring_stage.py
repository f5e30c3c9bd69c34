"""The scoring stage: score a batch with the models in use and write the
results to Kafka `analytics` (in the loop's transaction), MongoDB `analytics`
and MQTT `analytics/{device_id}/{sensor}`."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from concurrent import futures
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import Producer
from pymongo.database import Database

from model_worker import metrics
from model_worker.registry import ModelRegistry
from model_worker.scoring import score_batch
from model_worker.sinks import produce_all, publish_all, write_documents
from model_worker.stage import ConsumedBatch

ANALYTICS_COLLECTION = "analytics"


class ScoringStage:
    name = "scoring"

    def __init__(self, registry: ModelRegistry, producer: Producer, db: Database[dict[str, Any]],
                 mqtt_client: mqtt.Client, *, analytics_topic: str, mqtt_topic: str,
                 score_fields: Mapping[str, str], publish_timeout_s: float = 30.0) -> None:
        self.registry = registry
        self.producer = producer
        self.collection = db[ANALYTICS_COLLECTION]
        self.mqtt_client = mqtt_client
        self.analytics_topic = analytics_topic
        self.mqtt_topic = mqtt_topic
        self.score_fields = score_fields
        self.publish_timeout_s = publish_timeout_s
        self._mongo_writer = futures.ThreadPoolExecutor(1, thread_name_prefix="mongo-write")

    def handle(self, batch: ConsumedBatch, now_ns: int) -> None:
        # One snapshot per batch: a hot swap lands between batches, never inside one.
        models = self.registry.current()
        started = time.perf_counter()
        outcome = score_batch(batch.readings, lambda s: self.registry.for_sensor(models, s),
                              self.score_fields, now_ns)
        metrics.SCORE_SECONDS.observe(time.perf_counter() - started)
        results = outcome.results
        payloads = [r.to_json() for r in results]

        # MongoDB waits on the network with the GIL released: let it overlap the
        # Kafka and MQTT writes, which keep this thread busy.
        mongo_write = self._mongo_writer.submit(self._write_mongo,
                                                [r.to_document() for r in results])
        started = time.perf_counter()
        produce_all(self.producer, self.analytics_topic,
                    [(r.device_id.encode(), p) for r, p in zip(results, payloads, strict=True)])
        metrics.WRITE_SECONDS.labels(sink="kafka").observe(time.perf_counter() - started)

        started = time.perf_counter()
        try:
            publish_all(self.mqtt_client,
                        [(self.mqtt_topic.format(device_id=r.device_id, sensor=r.sensor), p)
                         for r, p in zip(results, payloads, strict=True)],
                        self.publish_timeout_s)
        finally:
            # Never leave a write running behind a failed batch: it would race the retry.
            futures.wait([mongo_write])
        metrics.WRITE_SECONDS.labels(sink="mqtt").observe(time.perf_counter() - started)
        mongo_write.result()

        scored = Counter(r.sensor for r in results if r.model is not None)
        anomalies = Counter(r.sensor for r in results if r.anomaly)
        for sensor, count in scored.items():
            metrics.SCORED.labels(sensor=sensor).inc(count)
            metrics.ANOMALIES.labels(sensor=sensor).inc(anomalies.get(sensor, 0))
        for (sensor, reason), count in outcome.unscored.items():
            metrics.UNSCORED.labels(sensor=sensor, reason=reason).inc(count)

    def _write_mongo(self, documents: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        write_documents(self.collection, documents)
        metrics.WRITE_SECONDS.labels(sink="mongo").observe(time.perf_counter() - started)

    def tick(self, now_ns: int) -> None:
        """Nothing time-driven: the registry watches the model files on its own thread."""

    def assigned(self, partitions: list[int]) -> None:
        """Scoring keeps no per-partition state."""

    def revoked(self, partitions: list[int]) -> None:
        """Scoring keeps no per-partition state."""

    def close(self) -> None:
        """Writes are complete when `handle` returns; only the writer thread is left."""
        self._mongo_writer.shutdown(wait=True)
