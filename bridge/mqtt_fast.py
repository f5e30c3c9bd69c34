"""FastReadClient (contracts.mqtt_fast) with a lean PUBLISH path and batched PUBACKs.

paho builds an `MQTTMessage` and an MQTT 5 `Properties` object per PUBLISH
and queues every PUBACK as its own packet with its own wake-up of the network
thread. Profiled under load that, with paho's one-packet-per-read loop, was
about two thirds of the forwarder's network thread. On top of FastReadClient's
read loop (several packets per read, framing in `next_frame`):

- a QoS 0/1 PUBLISH goes straight to `on_publish_received(topic, payload,
  qos, mid, retain)`, skipping the properties (the bridge reads none) and
  the `MQTTMessage`; anything else (CONNACK, SUBACK, PING, QoS 2, a topic that
  is not UTF-8 or empty) takes paho's own handler unchanged;
- `ack_many` sends many PUBACKs as one write.

Connecting, keepalive, reconnecting, subscribing and TLS stay paho's. Besides
what FastReadClient relies on, this uses paho 2.x's `_send_puback`, `_manual_ack`
and `_protocol` (pinned `<3` in pyproject.toml); the tests in
tests/bridge/test_mqtt_fast.py run this class against the real broker.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

from paho.mqtt.client import MQTT_LOG_ERR, MQTTErrorCode
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from contracts.mqtt_fast import PUBACK, PUBLISH, FastReadClient, next_frame

__all__ = ["FastAckClient", "PublishCallback", "next_frame"]

_PUBACK = struct.Struct("!BBH")
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS
_SYNC_FILTER = "$edgepipe/sync"
_FAST_COMMANDS = (PUBLISH, PUBLISH | 0x02)  # QoS 0 and QoS 1; QoS 2 stays paho's

# topic, payload, qos, mid, retain
PublishCallback = Callable[[str, bytes, int, int, bool], None]


def _varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """An MQTT 5 variable byte integer at `pos`: (value, position after it)."""
    value = shift = 0
    for i in range(pos, min(pos + 4, end)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise MalformedPacket("bad variable byte integer")


class FastAckClient(FastReadClient):
    """FastReadClient; set `on_publish_received` to take PUBLISH packets on the lean path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_publish_received: PublishCallback | None = None

    def ack_many(self, mids: Iterable[int]) -> None:
        """PUBACKs for these QoS 1 message ids, queued as one write."""
        packet = b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])
        if packet:
            self._packet_queue(PUBACK, packet, 0, 0)

    def sync(self, timeout: float) -> bool:
        """Waits until the broker has handled every packet sent so far: it
        handles a client's packets in order, so the UNSUBACK of a filter we
        never used comes after our earlier PUBACKs. Without this, PUBACKs sent
        just before `disconnect()` are often lost and the messages come back."""
        answered: set[int | None] = set()
        arrived = threading.Condition()

        def on_unsubscribe(_client: Any, _userdata: Any, mid: int, *_: Any) -> None:
            with arrived:
                answered.add(mid)
                arrived.notify_all()

        previous = self.on_unsubscribe
        self.on_unsubscribe = on_unsubscribe
        try:
            rc, mid = self.unsubscribe(_SYNC_FILTER)
            with arrived:
                return rc == _SUCCESS and arrived.wait_for(lambda: mid in answered, timeout)
        finally:
            self.on_unsubscribe = previous

    def _handle_frame(self, command: int, data: bytes, start: int, end: int) -> MQTTErrorCode:
        # 0xF6 keeps the type and QoS bits, drops DUP and RETAIN.
        if command & 0xF6 in _FAST_COMMANDS and self.on_publish_received is not None:
            fast_rc = self._fast_publish(command, data, start, end)
            if fast_rc is not None:
                return fast_rc
            return self._paho_handle(command, data, start, end)
        return super()._handle_frame(command, data, start, end)

    def _fast_publish(self, command: int, data: bytes, start: int,
                      end: int) -> MQTTErrorCode | None:
        """A QoS 0/1 PUBLISH to `on_publish_received`; None hands it to paho."""
        qos = (command >> 1) & 0x03
        if end - start < 2:
            raise MalformedPacket("PUBLISH without a topic length")
        topic_end = start + 2 + (data[start] << 8 | data[start + 1])
        if topic_end == start + 2:
            return None  # empty topic (an MQTT 5 alias): paho's handler decides
        pos = topic_end
        mid = 0
        if qos:
            if pos + 2 > end:
                raise MalformedPacket("PUBLISH without a message id")
            mid = data[pos] << 8 | data[pos + 1]
            pos += 2
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            if pos < end and data[pos] < 0x80:  # properties length < 128: one byte
                pos += 1 + data[pos]
            else:
                properties_length, pos = _varint(data, pos, end)
                pos += properties_length
        if pos > end:
            raise MalformedPacket("PUBLISH shorter than its header")
        try:
            topic = data[start + 2:topic_end].decode()
        except UnicodeDecodeError:
            return None
        callback = self.on_publish_received
        if callback is None:
            return None
        try:
            callback(topic, data[pos:end], qos, mid, command & 0x01 == 1)
        except Exception as err:
            self._easy_log(MQTT_LOG_ERR, "Caught exception in on_publish_received: %s", err)
            if not self.suppress_exceptions:
                raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return _SUCCESS
