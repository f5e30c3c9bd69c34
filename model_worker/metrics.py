"""Prometheus metrics of the model worker (default registry, served by OpsServer)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from model_worker.models import LoadedModel

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONSUMED = Counter("worker_events_consumed_total", "Kafka records consumed from readings")
SCORED = Counter("worker_events_scored_total", "Readings scored by a model", ["sensor"])
UNSCORED = Counter("worker_events_unscored_total",
                   "Readings passed through with model null", ["sensor", "reason"])
ANOMALIES = Counter("worker_anomalies_total", "Readings outside the model's interval",
                    ["sensor"])
DEAD_LETTERS = Counter("worker_dead_letters_total", "Records sent to the dead-letter path",
                       ["reason"])
BATCH_SIZE = Histogram("worker_batch_size", "Records per micro-batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000))
SCORE_SECONDS = Histogram("worker_score_seconds", "Scoring time per batch",
                          buckets=LATENCY_BUCKETS)
WRITE_SECONDS = Histogram("worker_write_seconds", "Write time per batch and sink", ["sink"],
                          buckets=LATENCY_BUCKETS)
COMMIT_SECONDS = Histogram("worker_commit_seconds", "Transaction commit time per batch",
                           buckets=LATENCY_BUCKETS)
BATCH_FAILURES = Counter("worker_batch_failures_total",
                         "Batches aborted and redelivered", ["stage"])
MODEL_LOADS = Counter("worker_model_loads_total", "Model files loaded", ["model", "kind"])
MODEL_LOAD_FAILURES = Counter("worker_model_load_failures_total",
                              "Model files that failed to load", ["model"])
MODEL_INFO = Gauge("worker_model_info", "Models in use (1 per model)",
                   ["model", "kind", "hash"])
KAFKA_REBUILDS = Counter("worker_kafka_rebuilds_total",
                         "Kafka consumer and transactional producer replaced after a fatal, "
                         "fenced or unknown-member error", ["reason"])
CONSUMER_LAG = Gauge("worker_consumer_lag", "Records behind the end of readings, per partition",
                     ["partition"])


def set_models(models: Iterable[LoadedModel]) -> None:
    MODEL_INFO.clear()
    for model in models:
        MODEL_INFO.labels(model=model.stamp.name, kind=model.stamp.kind,
                          hash=model.stamp.sha256_12).set(1)
