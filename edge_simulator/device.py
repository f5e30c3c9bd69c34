"""One simulated device: its own MQTT client (own client id and credentials,
QoS 1), reconnect with backoff, and a bounded outbox that keeps readings while
the broker is away.

Devices never run a network thread: the fleet drives every client's socket
from one selector loop (paho's external-loop API), which is what lets one
process hold thousands of connections.
"""

from __future__ import annotations

import logging
import random
import selectors
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from contracts.clients import mqtt_connect
from contracts.errors import ServiceUnavailable
from contracts.settings import Settings
from edge_simulator.payloads import Message

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(slots=True)
class FleetCounters:
    """Totals over all devices; only the fleet's loop thread writes them."""

    enqueued: int = 0
    sent: int = 0  # handed to the MQTT client (PUBLISH written or waiting to be resent)
    acked: int = 0  # PUBACK received
    dropped: int = 0  # pushed out of a full outbox
    refused: int = 0  # PUBACK with a failure reason (e.g. 135, not authorized by the ACL)
    reconnects: int = 0
    connect_failures: int = 0
    connected: int = 0
    anomalies: int = 0

    @property
    def queued(self) -> int:
        """In outboxes or sent and not yet acknowledged."""
        return self.enqueued - self.dropped - self.acked - self.refused


class Device:
    def __init__(self, device_id: str, client: mqtt.Client, selector: selectors.BaseSelector,
                 counters: FleetCounters, *, outbox_limit: int, window: int,
                 rng: random.Random) -> None:
        self.device_id = device_id
        self.client = client
        self.outbox: deque[Message] = deque()
        self.unacked = 0
        self.connected = False
        self.ever_connected = False
        self.next_connect_at = 0.0
        self.awaiting_connect = True  # in the fleet's connect queue
        self.closing = False
        self._connect_called = False
        self._selector = selector
        self._counters = counters
        self._outbox_limit = outbox_limit
        self._window = window
        self._rng = rng
        self._backoff_s = BACKOFF_MIN_S
        self._writing = False
        # paho retries what it already holds; we only hand it `window` at a time.
        client.max_inflight_messages_set(window)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close

    def enqueue(self, messages: list[Message]) -> None:
        for message in messages:
            if len(self.outbox) >= self._outbox_limit:
                # The newest readings matter most to a live pipeline.
                self.outbox.popleft()
                self._counters.dropped += 1
            self.outbox.append(message)
        self._counters.enqueued += len(messages)

    def pump(self) -> None:
        """Hand queued messages to the client up to the in-flight window, then write."""
        client = self.client
        while self.connected and self.unacked < self._window and self.outbox:
            topic, payload = self.outbox.popleft()
            client.publish(topic, payload, qos=1)
            self.unacked += 1
            self._counters.sent += 1
        self.flush()

    def flush(self) -> None:
        client = self.client
        if client.want_write():
            client.loop_write()
        self._watch_writable(client.want_write())

    def connect(self, settings: Settings, now: float) -> None:
        """First connection or a retry once the backoff has passed."""
        try:
            if self._connect_called:
                self.client.reconnect()
            else:
                self._connect_called = True
                mqtt_connect(self.client, settings)
        except (OSError, ServiceUnavailable) as exc:
            self._counters.connect_failures += 1
            self._schedule_retry(now, str(exc))
            return
        self.flush()

    def _schedule_retry(self, now: float, reason: str) -> None:
        if self._backoff_s == BACKOFF_MIN_S:
            log.warning("device cannot reach the broker; retrying with backoff",
                        extra={"device_id": self.device_id, "reason": reason})
        # Full jitter, so a fleet that lost the broker together does not return together.
        self.next_connect_at = now + self._rng.uniform(BACKOFF_MIN_S, self._backoff_s)
        self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection",
                      extra={"device_id": self.device_id, "reason": str(reason_code)})
            return
        if self.ever_connected:
            self._counters.reconnects += 1
        self.ever_connected = True
        self.connected = True
        self._counters.connected += 1
        self._backoff_s = BACKOFF_MIN_S

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: Any, properties: Any) -> None:
        if self.connected:
            self._counters.connected -= 1
        self.connected = False
        if not self.closing:
            self._schedule_retry(time.monotonic(), str(reason_code))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: Any, properties: Any) -> None:
        self.unacked -= 1
        if reason_code.is_failure:
            # The broker answered but took nothing: counting it as acked would hide
            # an account publishing where the ACL does not let it.
            if not self._counters.refused:
                log.error("broker refused a publish (not authorized for this topic?)",
                          extra={"device_id": self.device_id, "reason": str(reason_code)})
            self._counters.refused += 1
            return
        self._counters.acked += 1

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._writing = False
        self._selector.register(sock, selectors.EVENT_READ, self)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._selector.unregister(sock)

    def _watch_writable(self, wanted: bool) -> None:
        """Ask the selector for write readiness only while the socket buffer is full."""
        sock = self.client.socket()
        if wanted == self._writing or sock is None:
            return
        self._writing = wanted
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
        self._selector.modify(sock, events, self)
