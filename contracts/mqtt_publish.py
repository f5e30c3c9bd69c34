"""Batched QoS 1/2 publishing on paho's own bookkeeping, for the worker.

paho's `publish()` writes the wake-up socketpair of the network thread once
per message, and on every PUBACK scans all outstanding messages for one
queued beyond max_inflight (quadratic in a batch). `LeanClient` (on
contracts.mqtt_fast's read loop and PUBACK path) adds:

- `publish_many`: a batch of PUBLISH packets (`encode_publish`, pure) as one
  write with one wake-up, using paho's message ids, `_out_messages`, inflight
  accounting and message states, so max_inflight queueing, retransmission
  after a reconnect and `MQTTMessageInfo.wait_for_publish`/`is_published`
  behave as with `publish`;
- messages it queued beyond max_inflight go out in order from a queue of
  their ids, one write per read of acks, instead of paho's scan;
- a refused publish (PUBACK reason >= 0x80) is still "published" to paho;
  `PublishInfo.reason_code` says why, and refusals are counted and logged.

paho 2.x internals relied on besides contracts.mqtt_fast's (pinned `<3`):
`_packet_queue`, `_update_inflight`, `_messages_reconnect_reset_out`,
`_inflight_messages`, `_max_inflight_messages`, `_max_queued_messages`,
`_mid_generate`, `_raise_for_invalid_topic`, `_protocol`, the message states
(`MessageState`) and the slots of `MQTTMessage`/`MQTTMessageInfo`.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from collections.abc import Sequence
from time import monotonic as _time_func
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import (
    MQTT_LOG_DEBUG,
    MQTTErrorCode,
    MQTTMessage,
    MQTTMessageInfo,
    PayloadType,
)
from paho.mqtt.enums import MessageState, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contracts.mqtt_fast import PUBLISH, FastReadClient

MAX_REMAINING_LENGTH = 268_435_455
REFUSAL_LOG_INTERVAL_S = 60.0
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_MID = struct.Struct("!H")

log = logging.getLogger(__name__)


def remaining_length(length: int) -> bytes:
    """MQTT's variable byte integer for a packet's remaining length."""
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"packet too large: remaining length {length}")
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def encode_publish(topic: bytes, payload: bytes, mid: int, qos: int, retain: bool,
                   dup: bool = False, v5: bool = True) -> bytes:
    """A PUBLISH packet as paho's `_send_publish` builds it without properties
    (MQTT 5: an empty property list)."""
    command = PUBLISH | (dup << 3) | (qos << 1) | retain
    head = _MID.pack(len(topic)) + topic
    if qos:
        head += _MID.pack(mid)
    if v5:
        head += b"\x00"
    return bytes((command,)) + remaining_length(len(head) + len(payload)) + head + payload


class PublishInfo(MQTTMessageInfo):
    """paho's MQTTMessageInfo, plus the broker's reason when it refused the
    message (None: accepted, or not acknowledged yet). The messages of one
    `publish_many` share one Condition: paho builds one per message, about a
    tenth of the worker's CPU in a profile; a completion wakes every waiter of
    the batch, each of which rechecks its own flag."""

    __slots__ = ("reason_code",)

    def __init__(self, mid: int, condition: threading.Condition) -> None:
        # paho 2.x's MQTTMessageInfo.__init__, but for the Condition
        self.mid = mid
        self._published = False
        self._condition = condition
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0
        self.reason_code: ReasonCode | None = None

    def _set_as_published(self) -> None:
        with self._condition:
            self._published = True
            self._condition.notify_all()


class _Outgoing(MQTTMessage):
    """An MQTTMessage whose info is a PublishInfo. Sets the slots of paho 2.x's
    MQTTMessage.__init__ directly: calling it would build a second info."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes, qos: int, retain: bool,
                 now: float, condition: threading.Condition) -> None:
        self.timestamp = now
        self.state = MessageState.MQTT_MS_INVALID
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.info = PublishInfo(mid, condition)
        self.properties = None


class LeanClient(FastReadClient):
    """FastReadClient with `publish_many`, its queue and refusal reasons."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused_total = 0  # publishes the broker refused (PUBACK reason >= 0x80)
        # Messages beyond max_inflight, sent as acks free the window (_update_inflight;
        # all three under _out_message_mutex): paho's publish() or a reconnect may
        # have queued some (its scan finds them), publish_many's are in _queued.
        self._maybe_queued = False
        self._queued: deque[int] = deque()
        self._refill: list[bytes] = []  # their packets, one write per read
        self._refusals_logged = 0
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL_S

    def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int = 1,
                     retain: bool = False) -> list[MQTTMessageInfo]:
        """`publish(topic, payload, qos, retain)` for each message, as one
        write and one wake-up of the network thread. QoS 0 goes through paho's
        `publish` (its packets carry their own completion)."""
        if qos == 0:
            return [self.publish(topic, payload, 0, retain) for topic, payload in messages]
        if qos not in (1, 2):
            raise ValueError("Invalid QoS level.")
        encoded = []
        for topic, payload in messages:  # all checked before anything is queued
            topic_bytes = topic.encode()
            if not topic_bytes:
                raise ValueError("Invalid topic.")
            self._raise_for_invalid_topic(topic_bytes)
            if not isinstance(payload, bytes | bytearray):
                raise TypeError("payload must be bytes")
            encoded.append((topic_bytes, bytes(payload)))
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        sent_state = (MessageState.MQTT_MS_WAIT_FOR_PUBACK if qos == 1
                      else MessageState.MQTT_MS_WAIT_FOR_PUBREC)
        now = _time_func()
        condition = threading.Condition()
        infos: list[MQTTMessageInfo] = []
        packets: list[bytes] = []
        # As paho's publish(): bookkeeping and queueing under _out_message_mutex, so
        # a reconnect (which resets and resends _out_messages) never sees half of it.
        with self._out_message_mutex:
            connected = self._sock is not None
            for topic_bytes, payload in encoded:
                mid = self._mid_generate()
                message = _Outgoing(mid, topic_bytes, payload, qos, retain, now, condition)
                infos.append(message.info)
                if (0 < self._max_queued_messages <= len(self._out_messages)
                        or mid in self._out_messages):
                    message.info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                    continue
                self._out_messages[mid] = message
                if (self._max_inflight_messages == 0
                        or self._inflight_messages < self._max_inflight_messages):
                    if connected:
                        self._inflight_messages += 1
                        message.state = sent_state
                        packets.append(encode_publish(topic_bytes, payload, mid, qos, retain,
                                                      False, v5))
                    else:  # sent by paho's CONNACK handler once connected
                        message.state = MessageState.MQTT_MS_PUBLISH
                        message.info.rc = MQTTErrorCode.MQTT_ERR_NO_CONN
                else:  # sent by paho's _update_inflight as acks come back
                    message.state = MessageState.MQTT_MS_QUEUED
                    self._queued.append(mid)
            if packets:
                self._easy_log(MQTT_LOG_DEBUG, "Sending %d PUBLISH (q%d, r%d) as one write",
                               len(packets), qos, retain)
                # One queue entry: _packet_write does per-packet work only for QoS 0.
                self._packet_queue(PUBLISH | (qos << 1), b"".join(packets), 0, qos)
        return infos

    def publish(self, topic: str, payload: PayloadType = None, qos: int = 0,
                retain: bool = False, properties: Properties | None = None) -> MQTTMessageInfo:
        if qos == 0:
            return super().publish(topic, payload, qos, retain, properties)
        with self._out_message_mutex:  # an RLock: paho's publish takes it again
            self._maybe_queued = True  # it may queue the message beyond max_inflight
            return super().publish(topic, payload, qos, retain, properties)

    def _messages_reconnect_reset_out(self) -> None:
        with self._out_message_mutex:
            # paho resends or queues everything again; its scan sends the queued.
            self._maybe_queued = True
            self._queued.clear()
            self._refill = []
            super()._messages_reconnect_reset_out()

    def _update_inflight(self) -> MQTTErrorCode:
        # paho calls this on every ack and scans the outstanding messages from the
        # oldest for a queued one until the window is full: every ack pays for
        # all messages in flight (at a batch of 500: ~12 us per message, and
        # ~40 more when the batch exceeds max_inflight). publish_many's queued
        # messages are taken from _queued instead. Callers hold _out_message_mutex.
        if self._maybe_queued:
            rc = super()._update_inflight()
            if rc == _SUCCESS and self._inflight_messages < self._max_inflight_messages:
                # paho stops early only with the window full: it saw every
                # message, and sent every queued one.
                self._maybe_queued = False
                self._queued.clear()
            return rc
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        while self._queued and self._inflight_messages < self._max_inflight_messages:
            message = self._out_messages.get(self._queued.popleft())
            if message is None or message.state != MessageState.MQTT_MS_QUEUED:
                continue
            self._inflight_messages += 1
            message.state = (MessageState.MQTT_MS_WAIT_FOR_PUBACK if message.qos == 1
                             else MessageState.MQTT_MS_WAIT_FOR_PUBREC)
            self._refill.append(encode_publish(message._topic, bytes(message.payload),
                                               message.mid, message.qos, message.retain,
                                               message.dup, v5))
        if not self._reading:
            self._flush_refill()
        return _SUCCESS

    def _after_read(self) -> None:  # what the acks of this read let out of the queue
        self._flush_refill()

    def _flush_refill(self) -> None:
        with self._out_message_mutex:
            if self._refill:
                packet, self._refill = b"".join(self._refill), []
                self._packet_queue(PUBLISH | 0x02, packet, 0, 1)

    def _do_on_publish(self, mid: int, reason_code: ReasonCode,
                       properties: Properties) -> MQTTErrorCode:
        # paho completes a refused message like an accepted one; keep the reason.
        if reason_code.is_failure:
            message = self._out_messages.get(mid)
            if message is not None and isinstance(message.info, PublishInfo):
                message.info.reason_code = reason_code
            self._refused(message.topic if message is not None else "?", reason_code)
        return super()._do_on_publish(mid, reason_code, properties)

    def _refused(self, topic: str, reason_code: ReasonCode) -> None:
        """Logged here, at most once a minute: a publisher that does not wait
        (analytics) would never hear of it, and a wrong ACL refuses every message."""
        self.refused_total += 1
        now = _time_func()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("MQTT broker refused publishes", extra={
                "refused": self.refused_total - self._refusals_logged, "topic": topic,
                "reason": str(reason_code)})
            self._refusal_logged_at, self._refusals_logged = now, self.refused_total


def publish_many(client: mqtt.Client, messages: Sequence[tuple[str, bytes]], qos: int = 1,
                 retain: bool = False) -> list[MQTTMessageInfo]:
    """A LeanClient's `publish_many`; any other paho Client publishes one by one."""
    if isinstance(client, LeanClient):
        return client.publish_many(messages, qos, retain)
    return [client.publish(topic, payload, qos, retain) for topic, payload in messages]
