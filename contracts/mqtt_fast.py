"""paho's Client with a cheaper read loop and PUBACK path (the bridge's and
the worker's MQTT clients build on it; publishing: contracts.mqtt_publish).

paho reads every packet with three `recv` calls (command byte, length, body)
and handles one packet per `select`; for each PUBACK it builds an MQTT 5
`ReasonCode` (which copies its table of names) and a `Properties`. Profiled
under load that was most of the network thread of the bridge and of the
worker. `FastReadClient` keeps paho's connecting, keepalive, reconnecting,
subscribing, TLS and message bookkeeping, and changes only this:

- `_packet_read` reads up to `RECV_BYTES` at once and handles every complete
  packet in the buffer (framing in `next_frame`, a pure function), each in
  `_handle_frame`, where subclasses add their fast paths;
- a PUBACK without properties and with a success reason code (0, or 16 "no
  matching subscribers": `puback_success_code`, pure) hands its message id
  straight to paho's `_do_on_publish` with cached reason/properties objects;
  any other PUBACK (a refusal, properties) and every other packet take paho's
  own handler, unchanged.

paho 2.x internals relied on (pinned `<3` in pyproject.toml): `_packet_read`
(overridden), `_packet_handle` and the `_in_packet` dict it reads,
`_do_on_publish`, `_out_messages`/`_out_message_mutex`, `_sock`, `_sock_recv`,
`_msgtime_mutex`/`_last_bytes_received`. tests/bridge/test_mqtt_fast.py and
tests/worker/test_mqtt_publish_fast.py run the subclasses against the real broker.
"""

from __future__ import annotations

from time import monotonic as _time_func
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTT_LOG_DEBUG, MQTT_LOG_ERR, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

RECV_BYTES = 65_536
PUBLISH = 0x30
PUBACK = 0x40
NO_MATCHING_SUBSCRIBERS = 16
_SUCCESS = MQTTErrorCode.MQTT_ERR_SUCCESS


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


class FastReadClient(mqtt.Client):
    """paho's Client with the lean read loop and PUBACK path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rbuf_sock: object = None
        self._reading = False  # inside _packet_read's loop over a buffer
        # Shared by every fast-path ack: paho builds these per PUBACK. on_publish
        # callbacks get them as they would get paho's, so must not change them.
        self._puback_reasons = {code: ReasonCode(PacketTypes.PUBACK, identifier=code)
                                for code in (0, NO_MATCHING_SUBSCRIBERS)}
        self._puback_properties = Properties(PacketTypes.PUBACK)

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
        self._reading = True
        try:
            while (frame := next_frame(data, pos)) is not None:
                command, start, pos = frame
                rc = self._handle_frame(command, data, start, pos)
                if rc != _SUCCESS or self._sock is not sock:
                    break
        except MalformedPacket as exc:
            self._easy_log(MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._reading = False
        self._rbuf = data[pos:]
        self._after_read()
        return rc

    def _after_read(self) -> None:
        """Called after each buffer's packets are handled; for subclasses."""

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
