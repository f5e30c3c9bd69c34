"""Prometheus metrics of stream analytics (default registry, served by the
worker's OpsServer)."""

from prometheus_client import Counter, Gauge, Histogram

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
