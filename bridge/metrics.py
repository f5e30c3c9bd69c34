"""Prometheus metrics of the bridge. The hot path counts in plain ints and a
housekeeping thread folds them in here, so a message costs no metric lock."""

import bisect
import collections

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("bridge_messages_received_total", "MQTT messages received")
FORWARDED = Counter("bridge_readings_forwarded_total",
                    "Records Kafka acknowledged (readings and dead letters)")
ACKED = Counter("bridge_messages_acked_total",
                "MQTT messages completed: PUBACK sent (QoS 1) or done (QoS 0)")
REJECTED = Counter("bridge_messages_rejected_total", "Messages sent to the dead-letter path",
                   ["reason"])
IN_FLIGHT = Gauge("bridge_messages_in_flight", "MQTT messages waiting for Kafka acknowledgements")
KAFKA_ERRORS = Counter("bridge_kafka_delivery_errors_total",
                       "Kafka deliveries that failed and were produced again")
KAFKA_ACK_LATENCY = Histogram(
    "bridge_kafka_ack_seconds", "MQTT receive to the last Kafka acknowledgement of the message",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
MQTT_CONNECTED = Gauge("bridge_mqtt_connected", "1 while the MQTT session is up")
KAFKA_REACHABLE = Gauge("bridge_kafka_reachable", "1 while Kafka acknowledges deliveries")

SINK_DOCUMENTS = Counter("bridge_sink_documents_total", "Documents written to MongoDB",
                         ["collection"])
SINK_DUPLICATES = Counter("bridge_sink_duplicates_total",
                          "Documents already stored (replays), counted as success",
                          ["collection"])
SINK_BAD_RECORDS = Counter("bridge_sink_bad_records_total",
                           "Kafka records the sink could not read, stored as dead letters")
SINK_WRITE_LATENCY = Histogram(
    "bridge_sink_write_seconds", "One batched MongoDB write",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SINK_BATCH_SIZE = Histogram(
    "bridge_sink_batch_records", "Kafka records per sink batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000))
SINK_MONGO_UP = Gauge("bridge_sink_mongo_up", "1 while MongoDB accepts the sink's writes")
SINK_LAG = Gauge("bridge_sink_lag_records", "Records in Kafka the sink has not written yet")


def observe_many(histogram: Histogram, now_ns: int, received_ns: list[int]) -> None:
    """`histogram.observe((now_ns - r) / 1e9)` for every r, but one lock per
    bucket touched: prometheus_client has no bulk observe, so this adds to its
    bucket and sum values directly, and falls back to observe() if those
    internals are not there."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    seconds = [(now_ns - r) / 1e9 for r in received_ns]
    if bounds is None or buckets is None or total is None:
        for value in seconds:
            histogram.observe(value)
        return
    counts = collections.Counter(bisect.bisect_left(bounds, value) for value in seconds)
    for index, count in counts.items():
        buckets[index].inc(count)
    total.inc(sum(seconds))
