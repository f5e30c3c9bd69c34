"""Replacing the forwarder's producer when its deliveries stall while Kafka answers.

Once (in a loaded CI run) the forwarder still had records pending 60 s after
Kafka's return, never reproduced since; a likely cause, a partition queue or
the idempotent producer's state left on a broker handle librdkafka had
decommissioned, is avoided by contracts.clients.RECOVERY, but a producer that
keeps records although the broker is back would hold the devices' PUBACKs
and report not ready until message.timeout.ms (5 minutes) fails them. The
guard notices it: records pending, none delivered for BRIDGE_KAFKA_REBUILD_S
since the later of the last delivery and Kafka's return, and the broker
answering a metadata request. It then builds a new producer, purges the old
one and produces everything the old one held on the new one, in the order the
bridge received their MQTT messages.

Nothing is acknowledged early or lost: each record stays with its MQTT message
until the new producer's delivery. A record the old producer had sent but not
seen acknowledged may be stored twice (the new producer has a new idempotence
id): downstream writes are keyed by event id, so a duplicate changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, Message, Producer
from prometheus_client import Counter

if TYPE_CHECKING:
    from bridge.forwarder import Forwarder, _Pending

log = logging.getLogger("bridge.kafka")

REBUILDS = Counter("bridge_kafka_producer_rebuilds_total",
                   "Producers replaced because deliveries stalled while Kafka answered")
# The old producer's purged records come back through its delivery callbacks;
# they are served this long at most (purging reports them at once).
_DRAIN_S = 10.0
_PROBE_TIMEOUT_S = 2.0


class StallGuard:
    """Called from the forwarder's Kafka thread after every poll."""

    def __init__(self, make_producer: Callable[[], Producer], rebuild_s: float) -> None:
        self.make_producer, self.rebuild_s = make_producer, rebuild_s
        self.rebuilds = 0
        self._next_check = 0.0
        # Old producers that still held records after the drain: polled until
        # empty, so their late reports reach the forwarder's retry path.
        self.retired: list[Producer] = []

    def check(self, forwarder: Forwarder) -> None:
        if self.retired:
            for old in self.retired:
                old.poll(0)
            self.retired = [old for old in self.retired if len(old) > 0]
        now = time.monotonic()
        health = forwarder.kafka_health
        if (forwarder.in_flight == 0 or health.down_since is not None or now < self._next_check
                or now - max(health.last_delivery, health.up_since) < self.rebuild_s):
            return
        self._next_check = now + self.rebuild_s  # one attempt per period at most
        try:
            forwarder.producer.list_topics(timeout=_PROBE_TIMEOUT_S)
        except KafkaException:
            return  # Kafka really is away: the outage path (not ready, no acks) holds
        self.rebuild(forwarder)

    def rebuild(self, forwarder: Forwarder) -> int:
        """New producer; what the old one held is produced on it. Returns how many records."""
        old, new = forwarder.producer, self.make_producer()
        held: list[tuple[Message, _Pending]] = []
        forwarder.purged = held  # the forwarder's delivery callback collects here
        try:
            old.purge()
            deadline = time.monotonic() + _DRAIN_S
            while len(old) > 0 and time.monotonic() < deadline:
                old.poll(0.1)
            old.poll(0)
        finally:
            forwarder.purged = None
        # Purging reports queued and in-flight records separately: back in the
        # order their messages arrived (stable, so a message's records keep theirs).
        held.sort(key=lambda item: item[1].received_ns)
        for msg, pending in held:
            forwarder.produce_again(new, msg, pending)
        forwarder.producer = new
        # A record paho's thread produced on the old one during the swap goes
        # through the ordinary retry path, onto the new producer.
        old.purge()
        old.poll(0)
        if len(old) > 0:
            log.warning("replaced kafka producer still holds records; polling it",
                        extra={"records": len(old)})
            self.retired.append(old)
        self.rebuilds += 1
        REBUILDS.inc()
        log.error("kafka producer stalled while the broker answers; replaced it",
                  extra={"records_produced_again": len(held), "in_flight": forwarder.in_flight,
                         "rebuilds": self.rebuilds})
        return len(held)
