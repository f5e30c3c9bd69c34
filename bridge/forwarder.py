"""MQTT -> Kafka with the PUBACK held until Kafka has every record of a message.

Threads: paho's network loop runs `on_message` (match, decode, produce); one
Kafka thread runs `producer.poll()`, whose delivery callbacks count down each
message's outstanding records and send the PUBACK at zero. The broker never
has more than `bridge_receive_maximum` unacknowledged QoS 1 messages in flight
to us, which bounds our memory and stops new work while Kafka is away.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, Message, Producer

from bridge import metrics
from bridge.codecs import decode
from bridge.kafka_health import KafkaHealth
from bridge.kafka_rebuild import StallGuard
from bridge.routes import Route, key_for
from bridge.subscriptions import client_id_for, split_owner, subscription_filters
from bridge.topic_cache import QOS_HEADER, RETAIN_HEADER, TopicCache
from contracts.dead_letters import DeadLetter
from contracts.errors import DecodeError
from contracts.settings import Settings

log = logging.getLogger("bridge.forwarder")

Headers = list[tuple[str, str | bytes | None]]
# Producer options for throughput; the safety options come from contracts.clients.
PRODUCER_TUNING: dict[str, Any] = {
    "linger.ms": 10,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 262_144,
}
_RETRY_BACKOFF_MAX_S = 30.0
_DEAD_LETTER_LOG_INTERVAL_S = 5.0
# Gen-0 collections every 700 container allocations are most of the GC cost at
# 10k+ messages/s (each message lives until Kafka acks it); 20k keeps memory flat.
_GC_GEN0_THRESHOLD = 20_000


class _Pending:
    """One MQTT message waiting for Kafka to acknowledge its records."""

    __slots__ = ("forwarder", "mid", "qos", "received_ns", "remaining")

    def __init__(self, forwarder: Forwarder, mid: int, qos: int, received_ns: int,
                 remaining: int) -> None:
        self.forwarder, self.mid, self.qos = forwarder, mid, qos
        self.received_ns, self.remaining = received_ns, remaining

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self.forwarder._delivered(self, err, msg)


class Forwarder:
    def __init__(self, settings: Settings, routes: list[Route], client: mqtt.Client,
                 producer: Producer, kafka_health: KafkaHealth,
                 unrouted_filters: tuple[str, ...] = (),
                 stall_guard: StallGuard | None = None) -> None:
        """`producer` (and the guard's) must report errors to `kafka_health.on_error`."""
        self.settings, self.routes = settings, routes
        self.client, self.producer, self.kafka_health = client, producer, kafka_health
        self.stall_guard = stall_guard
        # While the guard replaces the producer, failed deliveries are collected here.
        self.purged: list[tuple[Message, _Pending]] | None = None
        self.filters = subscription_filters([r.mqtt_filter for r in routes],
                                            unrouted_filters)
        self.stopping = threading.Event()
        self.accepting = True
        self.mqtt_connected = False
        self.subscribed = False
        # Hot-path tallies, each written by one thread only (no lock needed),
        # folded into Prometheus by the Kafka thread.
        self.received = self.started = self.acked_at_once = 0  # paho's thread
        self.not_ours = 0  # paho's thread: another bridge's share (BRIDGE_SPLIT_COUNT)
        self.forwarded = self.finished = 0  # kafka-poll thread
        self._folded = (0, 0, 0)
        self._retries: collections.deque[tuple[float, int, Message, _Pending]] = (
            collections.deque())
        self._dead_letter_logged: dict[str, float] = {}
        self._topics = TopicCache(routes)
        self._kafka_thread = threading.Thread(target=self._kafka_loop, name="kafka-poll",
                                              daemon=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # With bridge.mqtt_fast's client: PUBLISH packets skip paho's message
        # objects, and the PUBACKs one poll completes go out as one write.
        if hasattr(client, "on_publish_received"):
            client.on_publish_received = self._forward
        self._ack_many = getattr(client, "ack_many", None)
        self._acks: list[int] = []  # kafka-poll thread only
        self._done_received_ns: list[int] = []  # kafka-poll thread only
        self._delivered_since_poll = False  # kafka-poll thread only

    # --- MQTT side (paho's network thread) ---

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt connect refused", extra={"reason": str(reason)})
            return
        self.mqtt_connected = True
        metrics.MQTT_CONNECTED.set(1)
        # Subscribe on every connect: a resumed session keeps subscriptions, a
        # new or expired one would otherwise stay connected and move nothing.
        share = self.settings.bridge_share_group
        prefix = f"$share/{share}/" if self.settings.bridge_shared_subscription else ""
        client.subscribe([(prefix + f, 1) for f in self.filters])
        log.info("mqtt connected", extra={"session_present": flags.session_present,
                                          "client_id": client_id_for(self.settings),
                                          "filters": self.filters,
                                          "share_group": share if prefix else None})

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[Any], properties: Any) -> None:
        failed = [str(r) for r in reason_codes if r.is_failure]
        self.subscribed = not failed
        if failed:
            log.error("mqtt subscription refused", extra={"reasons": failed})
        else:
            log.info("mqtt subscribed", extra={"filters": self.filters})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.mqtt_connected = self.subscribed = False
        metrics.MQTT_CONNECTED.set(0)
        log.warning("mqtt disconnected", extra={"reason": str(reason),
                                                "in_flight": self.in_flight})

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        self._forward(msg.topic, payload, msg.qos, msg.mid, bool(msg.retain))

    def _forward(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        """One MQTT message: decode, produce every record, PUBACK after Kafka has them."""
        if not self.accepting:
            return  # never acked: the broker redelivers it to our next session
        received_ns = time.time_ns()
        self.received += 1
        info = self._topics.get(topic)
        route = info.route
        split = self.settings.bridge_split_count
        if split > 1 and split_owner(topic, info.fields if route else None,
                                     split) != self.settings.bridge_instance:
            self.client.ack(mid, qos)  # its owner has it in its own session
            self.not_ours += 1
            return
        try:
            if route is None:
                raise DecodeError("no_route", f"no route matches topic {topic!r}")
            readings = decode(route, info.fields, topic, payload, qos=qos,
                              received_at_ns=received_ns,
                              max_payload_bytes=self.settings.bridge_max_payload_bytes)
            kafka_topic = route.kafka_topic
            records = [(kafka_topic, key_for(route, r), r.to_json()) for r in readings]
        except Exception as exc:
            # A codec bug must not kill paho's network thread (it would stay
            # "connected" and move nothing): the message becomes a dead letter.
            reason = exc.reason if isinstance(exc, DecodeError) else "codec_error"
            letter = DeadLetter(reason=reason, message=str(exc) or repr(exc), topic=topic,
                                route=route.name if route else None,
                                codec=route.codec if route else None, payload=payload,
                                received_at_ns=received_ns)
            records = [(self.settings.kafka_topic_dlq, topic.encode(), letter.to_json())]
            self._count_dead_letter(letter)
        if not records:  # e.g. Sensor Logger's test push: nothing to forward
            self.client.ack(mid, qos)
            self.acked_at_once += 1
            return
        headers: Headers = [
            info.topic_header, QOS_HEADER[qos], RETAIN_HEADER[retain],
            ("received_at_ns", b"%d" % received_ns), info.route_header, info.codec_header,
        ]
        pending = _Pending(self, mid, qos, received_ns, len(records))
        self.started += 1
        on_delivery = pending.on_delivery
        for kafka_topic, key, value in records:
            try:  # the common case without the retry loop's extra call
                self.producer.produce(kafka_topic, value, key, headers=headers,
                                      on_delivery=on_delivery)
            except BufferError:
                self._produce_blocking(kafka_topic, key, value, headers, pending)

    def _produce_blocking(self, topic: str, key: bytes | None, value: bytes, headers: Headers,
                          pending: _Pending) -> None:
        """Wait for room in librdkafka's queue rather than drop or ack early."""
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers,
                                      on_delivery=pending.on_delivery)
                return
            except BufferError:
                if self.stopping.is_set():
                    return  # left unacked: redelivered after restart
                time.sleep(0.05)

    def _count_dead_letter(self, letter: DeadLetter) -> None:
        metrics.REJECTED.labels(letter.reason).inc()
        now = time.monotonic()
        if now - self._dead_letter_logged.get(letter.reason, 0.0) >= _DEAD_LETTER_LOG_INTERVAL_S:
            self._dead_letter_logged[letter.reason] = now
            log.warning("dead letter", extra={"reason": letter.reason, "topic": letter.topic,
                                              "detail": letter.message[:300]})

    # --- Kafka side (the kafka-poll thread) ---

    def _delivered(self, pending: _Pending, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if self.purged is not None:
                self.purged.append((msg, pending))
                return
            metrics.KAFKA_ERRORS.inc()
            attempt = 1
            self._retries.append((time.monotonic() + min(attempt, _RETRY_BACKOFF_MAX_S),
                                  attempt, msg, pending))
            log.warning("kafka delivery failed; producing again",
                        extra={"error": str(err), "topic": msg.topic()})
            return
        self._delivered_since_poll = True
        self.forwarded += 1
        pending.remaining -= 1
        if pending.remaining == 0:
            self._done_received_ns.append(pending.received_ns)
            if self._ack_many is None:
                self.client.ack(pending.mid, pending.qos)
            elif pending.qos == 1:
                self._acks.append(pending.mid)
            self.finished += 1

    def _after_poll(self) -> None:
        """Per poll, not per record: Kafka health, the ack latency histogram
        (prometheus' observe takes two locks per value) and the PUBACKs."""
        if self._delivered_since_poll:
            self._delivered_since_poll = False
            self.kafka_health.on_delivered()
        if self._done_received_ns:
            done, self._done_received_ns = self._done_received_ns, []
            metrics.observe_many(metrics.KAFKA_ACK_LATENCY, time.time_ns(), done)
        self._send_acks()

    def _send_acks(self) -> None:
        if self._acks and self._ack_many is not None:
            acks, self._acks = self._acks, []
            self._ack_many(acks)

    @property
    def in_flight(self) -> int:
        return self.started - self.finished

    @property
    def acked(self) -> int:
        return self.acked_at_once + self.finished

    def _kafka_loop(self) -> None:
        while not self.stopping.is_set():
            self.producer.poll(0.05)
            self._after_poll()
            self._produce_due_retries()
            self.kafka_health.probe_if_down(self.producer)
            if self.stall_guard is not None:
                self.stall_guard.check(self)
            self._fold_metrics()

    def _produce_due_retries(self) -> None:
        now = time.monotonic()
        for _ in range(len(self._retries)):
            due, attempt, msg, pending = self._retries.popleft()
            if due > now:
                self._retries.append((due, attempt, msg, pending))
                continue
            self.produce_again(self.producer, msg, pending, attempt)

    def produce_again(self, producer: Producer, msg: Message, pending: _Pending,
                      attempt: int = 0) -> None:
        try:
            producer.produce(str(msg.topic()), msg.value(), msg.key(), headers=msg.headers(),
                             on_delivery=pending.on_delivery)
        except BufferError:
            backoff = min(2.0 ** attempt, _RETRY_BACKOFF_MAX_S)
            self._retries.append((time.monotonic() + backoff, attempt + 1, msg, pending))

    def _fold_metrics(self) -> None:
        received, forwarded, acked = self.received, self.forwarded, self.acked
        old_received, old_forwarded, old_acked = self._folded
        metrics.RECEIVED.inc(received - old_received)
        metrics.FORWARDED.inc(forwarded - old_forwarded)
        metrics.ACKED.inc(acked - old_acked)
        metrics.IN_FLIGHT.set(self.in_flight)
        metrics.KAFKA_REACHABLE.set(1 if self.kafka_reachable() else 0)
        self._folded = (received, forwarded, acked)

    # --- lifecycle and readiness (main thread) ---

    def kafka_reachable(self) -> bool:
        return self.kafka_health.reachable(self.in_flight, self.settings.bridge_kafka_stall_s)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {
            "mqtt_connected": self.mqtt_connected, "mqtt_subscribed": self.subscribed,
            "kafka_reachable": self.kafka_reachable(), "in_flight": self.in_flight,
            "retrying": len(self._retries)}
        if self.settings.bridge_split_count > 1:
            details["split"] = {"instance": self.settings.bridge_instance,
                                "count": self.settings.bridge_split_count,
                                "not_ours": self.not_ours}
        return (self.mqtt_connected and self.subscribed and details["kafka_reachable"],
                details)

    def start(self) -> None:
        # Start-up objects (modules, routes, clients) never die: keep them out
        # of every collection, and collect the young generation less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        self.producer.poll(0)
        self._kafka_thread.start()
        self.client.loop_start()

    def stop(self) -> dict[str, int]:
        """Stop taking messages, let Kafka acknowledge what is in flight, send
        those PUBACKs, then disconnect; what Kafka never took stays unacked."""
        self.accepting = False
        self.stopping.set()
        self._kafka_thread.join()
        deadline = time.monotonic() + self.settings.bridge_shutdown_timeout_s
        while (self.in_flight > 0 or self._retries) and time.monotonic() < deadline:
            self.producer.poll(0.1)
            self._after_poll()
            self._produce_due_retries()
        left = self.producer.flush(max(0.0, deadline - time.monotonic()))
        self._after_poll()
        sync = getattr(self.client, "sync", None)
        if sync is not None and self.mqtt_connected:
            sync(max(1.0, deadline - time.monotonic()))  # the last PUBACKs reach the broker
        self._fold_metrics()
        self.client.disconnect()
        self.client.loop_stop()
        summary = {"received": self.received, "forwarded": self.forwarded,
                   "acked": self.acked, "unacked_in_flight": self.in_flight,
                   "unflushed_records": left}
        log.info("forwarder stopped", extra=summary)
        return summary
