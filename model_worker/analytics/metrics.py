"""Prometheus metrics of stream analytics (default registry, served by the
worker's OpsServer), and `EmissionCounter`, which feeds them per step."""

import logging
import time
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

from model_worker.analytics.policy import Emissions

log = logging.getLogger("model_worker.analytics.stage")  # where these lines always came from
LATE_LOG_EVERY_S = 10.0

WINDOWS_EMITTED = Counter("worker_analytics_windows_emitted_total",
                          "Window records written (first emission and revisions)",
                          ["size_s", "closed_by"])
WINDOW_REVISIONS = Counter("worker_analytics_window_revisions_total",
                           "Windows emitted again because readings arrived after they closed")
LATE_DROPPED = Counter("worker_analytics_late_dropped_total",
                       "Readings later than the allowed lateness, counted and not applied")
DUPLICATES = Counter("worker_analytics_duplicates_total",
                     "Readings skipped because their event id was already applied")
REPLAYED = Counter("worker_analytics_replayed_total",
                   "Redelivered readings skipped because their offset was already applied")
INVALID_VALUES = Counter("worker_analytics_invalid_values_total",
                         "Non-finite field values skipped")
STATE_SERIES = Gauge("worker_analytics_state_series", "(device, sensor) series held in memory")
STATE_WINDOWS = Gauge("worker_analytics_state_windows", "Open or revisable windows held")
STATE_EVENT_IDS = Gauge("worker_analytics_state_event_ids",
                        "Event-id hashes held for duplicate detection")
WRITE_SECONDS = Histogram("worker_analytics_write_seconds",
                          "Analytics checkpoint writes (windows, stats, Kafka flush, state)",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
WRITE_PART_SECONDS = Histogram(
    "worker_analytics_write_part_seconds",
    "One part of a checkpoint: windows, stats (MongoDB), flush (Kafka), state (MongoDB)",
    ["part"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
CHECKPOINTS = Counter("worker_analytics_checkpoints_total",
                      "Checkpoints written (outputs since the previous one, then the state)")
CAUGHT_UP = Counter("worker_analytics_caught_up_total",
                    "Readings read again from Kafka after a restart, between the last "
                    "checkpoint and the offsets the loop had committed")


class EmissionCounter:
    """Counts what a step emitted into the metrics and logs revisions, idle
    closes and (at most every LATE_LOG_EVERY_S) readings later than the lateness."""

    def __init__(self) -> None:
        self._late_unlogged = 0
        self._late_logged_at = 0.0

    def count(self, out: Emissions) -> None:
        emitted = Tally((w.size_s, why) for w, why in zip(out.windows, out.closed_by, strict=True))
        for (size_s, why), count in emitted.items():
            WINDOWS_EMITTED.labels(size_s=str(size_s), closed_by=why).inc(count)
        for window, why in zip(out.windows, out.closed_by, strict=True):
            if window.revision:
                WINDOW_REVISIONS.inc()
                log.info("window revised", extra={"window": window.id,
                                                  "revision": window.revision,
                                                  "count": window.moments.count})
            elif why == "idle":
                log.info("window closed by idle timeout", extra={"window": window.id})
        DUPLICATES.inc(out.duplicates)
        REPLAYED.inc(out.replayed)
        INVALID_VALUES.inc(out.invalid)
        if out.invalid:
            log.warning("non-finite values skipped", extra={"count": out.invalid})
        if out.too_late:
            LATE_DROPPED.inc(len(out.too_late))
            self._late_unlogged += len(out.too_late)
            now = time.monotonic()
            if now - self._late_logged_at >= LATE_LOG_EVERY_S:
                example = out.too_late[0]
                log.warning("readings later than the allowed lateness, not applied", extra={
                    "count": self._late_unlogged, "example_event_id": example.event_id,
                    "example_device": example.device_id, "example_sensor": example.sensor})
                self._late_unlogged, self._late_logged_at = 0, now
