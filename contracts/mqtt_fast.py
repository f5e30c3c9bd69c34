"""paho's Client with a cheaper read loop, PUBACK path and batched publish.

Profiled on the worker (500 readings/s, analytics on), paho's network thread
spent most of its time on PUBACKs: three `recv` calls and one `select` per
packet, and an MQTT 5 `ReasonCode` (which copies its table of names) plus a
`Properties` per ack. `publish()` wrote the wake-up socketpair once per message.
`LeanClient` keeps paho's connection handling, keepalive, reconnecting and
message bookkeeping, and changes only this:

- `_packet_read` reads up to `RECV_BYTES` at once and handles every complete
  packet in the buffer (framing in `next_frame`, a pure function);
- a PUBACK without properties and with a success reason code (0 or 16, "no
  matching subscribers") hands its message id straight to paho's
  `_do_on_publish` with cached reason/properties objects; any other PUBACK
  (a refusal, properties) and every other packet take paho's own handler;
- `publish_many` encodes a batch of QoS 1/2 PUBLISH packets (`encode_publish`,
  pure) into one write with one wake-up of the network thread, using paho's own
  message ids, `_out_messages`, inflight accounting and message states, so
  max_inflight queueing, retransmission after a reconnect and
  `MQTTMessageInfo.wait_for_publish` / `is_published` behave as with `publish`;
- a refused QoS 1 publish (PUBACK reason >= 0x80) is still "published" to
  paho; `PublishInfo.reason_code` says why, so callers can report it.

paho 2.x internals relied on (pinned `<3` in pyproject.toml): `_packet_read`,
`_packet_handle` and the `_in_packet` dict it reads, `_packet_queue`,
`_do_on_publish`, `_out_messages`/`_out_message_mutex`, `_inflight_messages`,
`_max_inflight_messages`, `_max_queued_messages`, `_mid_generate`,
`_raise_for_invalid_topic`, `_sock`, `_sock_recv`, the `mqtt_ms_*` states and
`MQTTMessage`'s slots. tests/worker/test_mqtt_publish_fast.py and
tests/bridge/test_mqtt_fast.py run these classes against the real broker.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from time import monotonic as _time_func
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import (
    MQTT_LOG_DEBUG,
    MQTT_LOG_ERR,
    MQTTErrorCode,
    MQTTMessage,
    MQTTMessageInfo,
)
from paho.mqtt.enums import MessageState, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

RECV_BYTES = 65_536
PUBLISH = 0x30
PUBACK = 0x40
MAX_REMAINING_LENGTH = 268_435_455
NO_MATCHING_SUBSCRIBERS = 16
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_MID = struct.Struct("!H")
REFUSAL_LOG_INTERVAL_S = 60.0

log = logging.getLogger(__name__)


def next_frame(buf: bytes | bytearray, start: int) -> tuple[int, int, int] | None:
    """(command byte, body start, body end) of the MQTT packet at `start`, or
    None while it is incomplete. A remaining length longer than the protocol's
    four bytes is a MalformedPacket."""
    size = len(buf)
    i = start + 1
    length = 0
    shift = 0
    while True:
        if i >= size:
            return None
        byte = buf[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if i - start > 4:
            raise MalformedPacket("remaining length longer than 4 bytes")
    end = i + length
    return (buf[start], i, end) if end <= size else None


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


def puback_success_code(body: bytes | bytearray, start: int, end: int) -> int | None:
    """The reason code of a PUBACK body that may skip paho's decoder: success
    (0 or 16) and no properties; None for anything else (refusals, properties,
    a malformed length), which paho's handler must see."""
    length = end - start
    if length == 2:
        return 0
    if length in (3, 4) and body[start + 2] in (0, NO_MATCHING_SUBSCRIBERS) and (
            length == 3 or body[start + 3] == 0):
        return body[start + 2]
    return None


class PublishInfo(MQTTMessageInfo):
    """paho's MQTTMessageInfo, plus the broker's reason when it refused the
    message (None: accepted, or not acknowledged yet)."""

    __slots__ = ("reason_code",)

    def __init__(self, mid: int) -> None:
        super().__init__(mid)
        self.reason_code: ReasonCode | None = None


class _Outgoing(MQTTMessage):
    """An MQTTMessage whose info is a PublishInfo. Sets the slots of paho 2.x's
    MQTTMessage.__init__ directly: calling it would build a second info."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes, qos: int, retain: bool,
                 now: float) -> None:
        self.timestamp = now
        self.state = MessageState.MQTT_MS_INVALID
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.info = PublishInfo(mid)
        self.properties = None


class LeanClient(mqtt.Client):
    """paho's Client with the lean read loop, PUBACK path and `publish_many`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rbuf_sock: object = None
        # Shared by every fast-path ack: paho builds these per PUBACK. on_publish
        # callbacks get them as they would get paho's, so must not change them.
        self._puback_reasons = {code: ReasonCode(PacketTypes.PUBACK, identifier=code)
                                for code in (0, NO_MATCHING_SUBSCRIBERS)}
        self._puback_properties = Properties(PacketTypes.PUBACK)
        self.refused_total = 0  # publishes the broker refused (PUBACK reason >= 0x80)
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
        infos: list[MQTTMessageInfo] = []
        packets: list[bytes] = []
        # As paho's publish(): bookkeeping and queueing under _out_message_mutex, so
        # a reconnect (which resets and resends _out_messages) never sees half of it.
        with self._out_message_mutex:
            connected = self._sock is not None
            for topic_bytes, payload in encoded:
                mid = self._mid_generate()
                message = _Outgoing(mid, topic_bytes, payload, qos, retain, now)
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
            if packets:
                self._easy_log(MQTT_LOG_DEBUG, "Sending %d PUBLISH (q%d, r%d) as one write",
                               len(packets), qos, retain)
                # One queue entry: _packet_write does per-packet work only for QoS 0.
                self._packet_queue(PUBLISH | (qos << 1), b"".join(packets), 0, qos)
        return infos

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

    def _packet_read(self) -> MQTTErrorCode:
        sock = self._sock
        if sock is not self._rbuf_sock:  # a new connection: nothing carries over
            self._rbuf_sock, self._rbuf = sock, b""
        try:
            data = self._sock_recv(RECV_BYTES)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._msgtime_mutex:
            self._last_bytes_received = _time_func()
        if self._rbuf:  # the start of a packet the last read cut off
            data = self._rbuf + data
        # `data` is bytes, so each payload slice is one copy (a bytearray
        # slice would be copied twice to give a callback bytes).
        pos = 0
        rc = _SUCCESS
        try:
            while (frame := next_frame(data, pos)) is not None:
                command, start, pos = frame
                rc = self._handle_frame(command, data, start, pos)
                if rc != _SUCCESS or self._sock is not sock:
                    break
        except MalformedPacket as exc:
            self._easy_log(MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._rbuf = data[pos:]
        return rc

    def _handle_frame(self, command: int, data: bytes, start: int, end: int) -> MQTTErrorCode:
        """One complete packet; subclasses add fast paths and call this for the rest."""
        if command == PUBACK:
            code = puback_success_code(data, start, end)
            if code is not None:
                mid = data[start] << 8 | data[start + 1]
                with self._out_message_mutex:
                    if mid in self._out_messages:
                        return self._do_on_publish(mid, self._puback_reasons[code],
                                                   self._puback_properties)
                return _SUCCESS
        return self._paho_handle(command, data, start, end)

    def _paho_handle(self, command: int, data: bytes, start: int, end: int) -> MQTTErrorCode:
        # paho's handlers read the packet from _in_packet, as its own reader leaves it.
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": end - start,
                           "packet": bytearray(data[start:end]), "to_process": 0, "pos": 0}
        return self._packet_handle()


def publish_many(client: mqtt.Client, messages: Sequence[tuple[str, bytes]], qos: int = 1,
                 retain: bool = False) -> list[MQTTMessageInfo]:
    """A LeanClient's `publish_many`; any other paho Client publishes one by one."""
    if isinstance(client, LeanClient):
        return client.publish_many(messages, qos, retain)
    return [client.publish(topic, payload, qos, retain) for topic, payload in messages]
