"""Whether Kafka is reachable, from the producer's own signals: its error
callback says when every broker is down, a delivery says it is back, and while
nothing is being delivered a cheap metadata probe notices the return."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, Producer

log = logging.getLogger("bridge.kafka")

_DOWN_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT,
                         KafkaError._RESOLVE})
PROBE_INTERVAL_S = 5.0


class KafkaHealth:
    def __init__(self) -> None:
        self.down_since: float | None = None
        self.last_delivery = time.monotonic()
        # When Kafka was last found reachable again (or the start): a stall is
        # measured from the later of this and the last delivery.
        self.up_since = time.monotonic()
        self._last_probe = 0.0

    def on_error(self, err: KafkaError) -> None:
        """The producer's `error_cb` (runs inside `poll()`)."""
        if (err.code() in _DOWN_CODES or err.fatal()) and self.down_since is None:
            self.down_since = time.monotonic()
            log.error("kafka unreachable", extra={"error": str(err), "fatal": err.fatal()})

    def on_delivered(self) -> None:
        self.last_delivery = time.monotonic()
        if self.down_since is not None:
            self.recovered()

    def probe_if_down(self, producer: Producer) -> None:
        now = time.monotonic()
        if self.down_since is None or now - self._last_probe < PROBE_INTERVAL_S:
            return
        self._last_probe = now
        try:
            # The metadata answer only proves a broker listens; deliveries stay the real test.
            producer.list_topics(timeout=2.0)
        except Exception:
            return
        self.recovered()

    def reachable(self, in_flight: int, stall_s: float) -> bool:
        if self.down_since is not None:
            return False
        return in_flight == 0 or time.monotonic() - self.last_delivery <= stall_s

    def recovered(self) -> None:
        """Kafka answers again (a delivery, the probe, or a replaced producer's probe)."""
        if self.down_since is not None:
            log.info("kafka reachable again",
                     extra={"down_s": round(time.monotonic() - self.down_since, 1)})
            self.up_since = time.monotonic()
        self.down_since = None
