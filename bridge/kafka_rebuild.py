"""Replacing the forwarder's producer when its deliveries stall while Kafka answers.

Twice in loaded CI runs the forwarder still had records pending 60 s after
Kafka's return: once with librdkafka's default re-bootstrap, and once with it
off (contracts.clients.RECOVERY), when its producer never found the broker
again (the last it logged was "new leader-1 not found in cache" as the broker
shut down; no metadata probe answered afterwards) while the sink's consumer in
the same process reconnected. Such a producer holds the devices' PUBACKs and
reports not ready until message.timeout.ms (5 minutes) fails its records.
The guard replaces it when either
- records are pending and none was delivered for BRIDGE_KAFKA_REBUILD_S since
  the later of the last delivery and Kafka's return, or
- the producer has found no broker for BRIDGE_KAFKA_REBUILD_S,
and a new producer gets a metadata answer (else Kafka really is away). The new
producer takes the old one's place, the old one is purged and everything it
held is produced on the new one, in the order the bridge received their MQTT
messages.

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
_RETRY_S = 10.0  # between probes while Kafka does not answer a new producer


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
        if now < self._next_check:
            return
        health = forwarder.kafka_health
        if health.down_since is not None:
            # Our producer finds no broker. Seen once Kafka was back: it never
            # reconnected (no metadata for 60 s and more) while other clients did.
            if now - health.down_since < self.rebuild_s:
                return
        elif (forwarder.in_flight == 0
              or now - max(health.last_delivery, health.up_since) < self.rebuild_s):
            return
        # Whether Kafka answers, asked by a new producer: the old one may be the
        # thing that cannot reach it. If it answers, it replaces the old one.
        fresh = self.make_producer()
        try:
            fresh.list_topics(timeout=_PROBE_TIMEOUT_S)
        except KafkaException:
            # Kafka really is away: the outage path (not ready, no acks) holds; ask
            # again soon, so a return is noticed within seconds.
            self._next_check = now + min(self.rebuild_s, _RETRY_S)
            return
        self._next_check = now + self.rebuild_s  # one replacement per period at most
        self.rebuild(forwarder, fresh)
        health.recovered()

    def rebuild(self, forwarder: Forwarder, new: Producer | None = None) -> int:
        """`new` (default: a new producer) replaces the forwarder's; what the old
        one held is produced on it. Returns how many records."""
        old = forwarder.producer
        if new is None:
            new = self.make_producer()
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
