"""The worker's lean MQTT publish path as pure logic: PUBLISH packets
byte-identical to paho's, remaining lengths, which PUBACKs may skip paho's
decoder, input checks before anything is queued, and completions of a
batch's messages sharing one Condition (no broker needed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from contracts.mqtt_fast import PUBACK, next_frame, puback_success_code
from contracts.mqtt_publish import LeanClient, PublishInfo, encode_publish, remaining_length


def paho_publish_packet(protocol: MQTTProtocolVersion, topic: bytes, payload: bytes, mid: int,
                        qos: int, retain: bool, dup: bool) -> bytes:
    """The bytes paho's own `_send_publish` queues for this message."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    queued: list[bytes] = []
    client._sock = object()  # type: ignore[assignment]  # "connected": it only checks for None

    def capture(_command: int, packet: bytes | bytearray, *_: Any) -> mqtt.MQTTErrorCode:
        queued.append(bytes(packet))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    client._packet_queue = capture  # type: ignore[method-assign,assignment]
    try:
        client._send_publish(mid, topic, payload, qos, retain, dup)
    finally:
        client._sock = None  # its __del__ closes a real socket
    return queued[0]


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
@pytest.mark.parametrize("size", [0, 1, 120, 127, 128, 16_380, 16_384, 2_097_152])
def test_publish_encoding_matches_paho(protocol: MQTTProtocolVersion, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"p" * (size % 256)
    long_topic = ("ünï/" + "x" * 300).encode()
    for topic, mid, qos, retain, dup in [(b"analytics/d1/t", 1, 1, True, False),
                                         (long_topic, 65535, 2, False, True),
                                         (b"a", 300, 1, False, True)]:
        ours = encode_publish(topic, payload, mid, qos, retain, dup,
                              protocol == MQTTProtocolVersion.MQTTv5)
        assert ours == paho_publish_packet(protocol, topic, payload, mid, qos, retain, dup)
        frame = next_frame(ours + b"\x40", 0)  # framed back, the next packet left alone
        assert frame is not None and frame[0] == ours[0] and frame[2] == len(ours)
        assert ours.endswith(payload)


def test_remaining_length_boundaries() -> None:
    assert remaining_length(0) == b"\x00"
    assert remaining_length(127) == b"\x7f"
    assert remaining_length(128) == b"\x80\x01"
    assert remaining_length(16_383) == b"\xff\x7f"
    assert remaining_length(16_384) == b"\x80\x80\x01"
    assert remaining_length(268_435_455) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError, match="too large"):
        remaining_length(268_435_456)


@pytest.mark.parametrize(("body", "code"), [
    (b"\x00\x07", 0),                 # MQTT 3.1.1, or MQTT 5 success in short form
    (b"\x00\x07\x00", 0),             # reason code, no property length
    (b"\x00\x07\x10", 16),            # no matching subscribers: still a success
    (b"\x00\x07\x00\x00", 0),         # reason code and an empty property list
    (b"\x00\x07\x10\x00", 16),
    (b"\x00\x07\x87", None),          # not authorized: paho's handler
    (b"\x00\x07\x97\x00", None),      # quota exceeded
    (b"\x00\x07\x00\x05\x1f\x00\x02ok", None),  # a reason string property
    (b"\x00\x07\x00\x01", None),      # property length without properties (malformed)
])
def test_puback_fast_path_only_for_plain_successes(body: bytes, code: int | None) -> None:
    framed = bytes([PUBACK]) + remaining_length(len(body)) + body
    frame = next_frame(framed, 0)
    assert frame is not None
    assert puback_success_code(framed, frame[1], frame[2]) == code


def test_a_bad_topic_or_payload_queues_nothing() -> None:
    client = LeanClient(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    for bad in [("ok/a", b"1"), ("no/+/wildcards", b"2")], [("ok", b"1"), ("", b"2")]:
        with pytest.raises(ValueError):
            client.publish_many(bad, qos=1)
    with pytest.raises(TypeError):
        client.publish_many([("ok", "text")], qos=1)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        client.publish_many([("ok", b"1")], qos=3)
    assert not client._out_messages and client._inflight_messages == 0


def test_infos_sharing_a_condition_each_wake_their_own_waiter() -> None:
    """A batch's infos share one Condition: completing one message must wake
    the thread waiting for it even while another thread waits on the same
    Condition for a different message (notify would wake only one of them;
    the waiters would then sleep a tenth of their 60 s timeout)."""
    condition = threading.Condition()
    infos = [PublishInfo(mid, condition) for mid in (1, 2)]
    done: list[int] = []

    def wait(info: PublishInfo) -> None:
        info.wait_for_publish(60)
        done.append(info.mid)

    waiters = [threading.Thread(target=wait, args=(info,)) for info in infos]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)  # both are waiting
    for info in reversed(infos):  # the first waiter is woken for the second message first
        info._set_as_published()
        time.sleep(0.2)  # and waits again before the first completes
    for waiter in waiters:
        waiter.join(3)
    assert sorted(done) == [1, 2]
    assert all(info.is_published() for info in infos)
