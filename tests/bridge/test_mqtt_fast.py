"""The bridge's lean MQTT receive path: framing as pure logic, then the client
against the real Mosquitto in MQTT 5 and 3.1.1, with held and batched PUBACKs
and the broker's redelivery of what was never acknowledged."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt_fast import FastAckClient, next_frame
from contracts.clients import mqtt_client, mqtt_connect
from contracts.settings import Settings
from tests.support import wait_for


def packet(command: int, body: bytes) -> bytes:
    length, size = bytearray(), len(body)
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            return bytes([command]) + bytes(length) + body


def frames_of(stream: bytes, chunk: int) -> list[tuple[int, bytes]]:
    """Feeds `stream` in `chunk`-byte reads, the way the client's buffer fills."""
    buf, found = bytearray(), []
    for i in range(0, len(stream), chunk):
        buf += stream[i:i + chunk]
        pos = 0
        while (frame := next_frame(buf, pos)) is not None:
            command, start, pos = frame
            found.append((command, bytes(buf[start:pos])))
        del buf[:pos]
    assert not buf, "bytes left over after the last complete packet"
    return found


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 127, 4096, 1 << 20])
def test_frames_survive_any_read_size(chunk: int) -> None:
    # Remaining lengths of 1, 2 and 3 bytes, an empty body, and a PUBACK train.
    bodies = [b"", b"x" * 5, b"y" * 127, b"z" * 128, b"w" * 16_383, b"v" * 16_384,
              bytes(range(256)) * 800]
    packets = [(0x32, body) for body in bodies] + [(0x40, b"\x00\x07")] * 3
    stream = b"".join(packet(c, b) for c, b in packets)
    assert frames_of(stream, chunk) == packets


def test_incomplete_and_malformed_lengths() -> None:
    assert next_frame(b"", 0) is None
    assert next_frame(b"\x30", 0) is None
    assert next_frame(b"\x30\x80", 0) is None  # length continues in the next read
    assert next_frame(b"\x30\x05abcd", 0) is None
    assert next_frame(b"\x30\x04abcd", 0) == (0x30, 2, 6)
    with pytest.raises(MalformedPacket):
        next_frame(b"\x30\xff\xff\xff\xff\x01", 0)


class Receiver:
    """A persistent-session FastAckClient with manual acks, recording every message."""

    def __init__(self, settings: Settings, client_id: str, root: str,
                 protocol: MQTTProtocolVersion) -> None:
        self.got: list[tuple[str, bytes, int, int, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client: mqtt.Client
        if protocol == MQTTProtocolVersion.MQTTv5:
            client = mqtt_client(settings, client_id, persistent=True, manual_ack=True,
                                 session_expiry_s=300, client_class=FastAckClient)
        else:
            client = FastAckClient(mqtt.CallbackAPIVersion.VERSION2, client_id,
                                   clean_session=False, protocol=protocol, manual_ack=True)
            client.username_pw_set(settings.mqtt_username,
                                   settings.mqtt_password.get_secret_value())
        assert isinstance(client, FastAckClient)
        self.client = client
        self.client.on_publish_received = self.record
        self.client.on_connect = lambda c, *_: c.subscribe(root + "#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        if protocol == MQTTProtocolVersion.MQTTv5:
            mqtt_connect(self.client, settings, receive_maximum=1000)
        else:
            self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK"

    def record(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        with self.lock:
            self.got.append((topic, payload, qos, mid, retain))

    def received(self) -> list[tuple[str, bytes, int, int, bool]]:
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(settings: Settings, messages: list[tuple[str, bytes, int, bool]]) -> None:
    """Publishes over MQTT 5; payloads starting with `props` carry properties,
    which a v5 receiver must skip to find the payload."""
    client = mqtt_client(settings)
    mqtt_connect(client, settings)
    client.loop_start()
    with_props = Properties(PacketTypes.PUBLISH)
    with_props.UserProperty = [("site", "a" * 300), ("k", "v")]
    with_props.ContentType = "application/json"
    infos = [client.publish(topic, payload, qos=qos, retain=retain,
                            properties=with_props if payload.startswith(b"props") else None)
             for topic, payload, qos, retain in messages]
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5,
                                      MQTTProtocolVersion.MQTTv311])
def test_held_acks_and_redelivery_against_the_broker(mqtt_ready: Settings, unique: str,
                                                     protocol: Any) -> None:
    settings, root = mqtt_ready, f"t/{unique}/fast/"
    client_id = f"fast-{unique}"
    publish_all(settings, [(root + "kept", b"retained", 1, True)])
    receiver = Receiver(settings, client_id, root, protocol)
    big = bytes(range(256)) * 1200  # 300 KiB: several reads of one packet
    messages = [(root + f"dev{i % 7}/t", b'{"seq": %d}' % i, 1, False) for i in range(600)]
    messages += [(root + "big", big, 1, False), (root + "ünïcode/ok", b"", 1, False),
                 (root + "q0", b"at most once", 0, False),
                 (root + "p", b"props and payload", 1, False)]
    publish_all(settings, messages)
    total = len(messages) + 1
    wait_for(lambda: len(receiver.received()) >= total, 30, f"{total} messages")
    got = receiver.received()
    assert len(got) == total, "a message was delivered twice without a reconnect"
    by_payload = {payload: (topic, qos, retain) for topic, payload, qos, _, retain in got}
    assert by_payload[b"retained"] == (root + "kept", 1, True)
    for topic, payload, qos, _ in messages:
        assert by_payload[payload] == (topic, qos, False)
    qos1 = [(payload, mid) for _, payload, qos, mid, _ in got if qos == 1]
    assert len({mid for _, mid in qos1}) == len(qos1), "message ids must be distinct in flight"

    # Ack half of them in batches; the other half the broker must send again.
    acked = {payload for payload, _ in qos1[::2]}
    for start in range(0, len(qos1), 100):
        receiver.client.ack_many(mid for payload, mid in qos1[start:start + 100]
                                 if payload in acked)
    assert receiver.client.sync(10), "no UNSUBACK: the broker did not answer"
    receiver.close()

    # The resumed session's re-subscribe sends the retained message anew; leave it out.
    again = Receiver(settings, client_id, root, protocol)
    unacked = {payload for payload, _ in qos1} - acked - {b"retained"}

    def redelivered() -> set[bytes]:
        return {payload for _, payload, *_ in again.received()} - {b"retained"}

    wait_for(lambda: redelivered() >= unacked, 30, f"{len(unacked)} redeliveries")
    assert redelivered() == unacked, "an acknowledged message came back"
    again.client.ack_many(mid for _, _, qos, mid, _ in again.received() if qos == 1)
    assert again.client.sync(10)
    again.close()
    publish_all(settings, [(root + "kept", b"", 1, True)])  # clears the retained message
