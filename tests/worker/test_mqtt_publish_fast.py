"""The worker's lean MQTT publish path (contracts.mqtt_publish.LeanClient)
against the real Mosquitto: batched QoS 1 publishes delivered exactly as sent,
refusals by the ACL through paho's handler, max_inflight queueing (alone and
mixed with paho's publish), publishes before connecting, and retransmission
across a broker restart. The pure logic: test_mqtt_publish_encoding.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MessageState

from contracts.clients import mqtt_client, mqtt_connect
from contracts.mqtt_fast import PUBACK
from contracts.mqtt_publish import LeanClient, PublishInfo
from contracts.settings import Settings
from model_worker.sinks import publish_all
from tests.faults.harness import service_stopped
from tests.security.conftest import NOT_AUTHORIZED, as_account, service_password
from tests.support import mqtt_subscribed, wait_for


class Subscriber:
    """Records every (topic, payload, retain) delivered on `topic_filter`; a
    persistent session keeps what arrives while it is away (a broker restart)."""

    def __init__(self, settings: Settings, topic_filter: str, client_id: str | None = None,
                 persistent: bool = False) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt_subscribed(settings, topic_filter, self._on_message, client_id,
                                      persistent)

    def _on_message(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload), msg.retain))

    def received(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.got)

    def delivered(self, count: int) -> list[tuple[str, bytes]]:
        """(topic, payload) of everything received, once at least `count` arrived."""
        wait_for(lambda: len(self.received()) >= count, 30, "every message delivered")
        return [(t, p) for t, p, _ in self.received()]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class CountingClient(LeanClient):
    """Counts the packets that go through paho's own handlers, by type. Clearing
    `acks_released` stalls its network thread at the next PUBACK (`acks_held`
    is set then): nothing is read or written until it is set again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paho_handled: dict[int, int] = {}
        self.acks_held = threading.Event()
        self.acks_released = threading.Event()
        self.acks_released.set()

    def _handle_frame(self, command: int, data: bytes, start: int, end: int) -> mqtt.MQTTErrorCode:
        if command == PUBACK and not self.acks_released.is_set():
            self.acks_held.set()
            self.acks_released.wait(60)
        return super()._handle_frame(command, data, start, end)

    def _paho_handle(self, command: int, data: bytes, start: int, end: int) -> mqtt.MQTTErrorCode:
        self.paho_handled[command & 0xF0] = self.paho_handled.get(command & 0xF0, 0) + 1
        return super()._paho_handle(command, data, start, end)


def lean_client(settings: Settings, max_inflight: int = 1000) -> CountingClient:
    client = mqtt_client(settings, client_class=CountingClient)
    assert isinstance(client, CountingClient)
    client.max_inflight_messages_set(max_inflight)  # as the worker: before connecting
    mqtt_connect(client, settings)
    client.loop_start()
    wait_for(client.is_connected, 10, "CONNACK")
    return client


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def publisher(mqtt_ready: Settings) -> Iterator[CountingClient]:
    client = lean_client(mqtt_ready)
    yield client
    close(client)


def clear_retained(client: LeanClient, topics: set[str]) -> None:
    for info in client.publish_many([(t, b"") for t in sorted(topics)], qos=1, retain=True):
        info.wait_for_publish(30)


def test_batched_retained_publishes_arrive_exactly_as_sent(
        mqtt_ready: Settings, unique: str, publisher: CountingClient) -> None:
    root = f"t/{unique}/lean/"
    live = Subscriber(mqtt_ready, root + "#")
    # 200 topics, each written 10 times over 4 batches: the last write is the retained one.
    messages = [(f"{root}d{i % 200}/{'ü' if i % 3 else 't'}", b'{"seq": %d}' % i + b"x" * (i % 700))
                for i in range(2000)]
    topics = {topic for topic, _ in messages}
    try:
        for start in range(0, len(messages), 500):
            refused = publish_all(publisher, messages[start:start + 500], timeout_s=30)
            assert refused == []
        live.delivered(len(messages))
        time.sleep(0.2)  # a duplicate would arrive right behind
        got = live.received()
        # One client's messages reach a subscriber in order, each exactly once.
        assert [(t, p) for t, p, _ in got] == messages
        assert publisher.paho_handled.get(0x40, 0) == 0, "successful PUBACKs took paho's path"
        with publisher._out_message_mutex:
            assert not publisher._out_messages and publisher._inflight_messages == 0

        late = Subscriber(mqtt_ready, root + "#")
        last = dict(messages)
        wait_for(lambda: len(late.received()) >= len(topics), 15, "retained messages")
        assert {t: (p, r) for t, p, r in late.received()} == {t: (p, True) for t, p in last.items()}
        late.close()
    finally:
        live.close()
        clear_retained(publisher, topics)


def test_publishes_before_the_connection_go_out_once_connected(mqtt_ready: Settings,
                                                               unique: str) -> None:
    root = f"t/{unique}/early/"
    live = Subscriber(mqtt_ready, root + "#")
    client = mqtt_client(mqtt_ready, client_class=LeanClient)
    assert isinstance(client, LeanClient)
    messages = [(f"{root}m{i}", b"%d" % i) for i in range(50)]
    infos = client.publish_many(messages, qos=1)
    # As paho's publish(): rc says "not connected", the message waits in _out_messages.
    assert {info.rc for info in infos} == {mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN}
    try:
        mqtt_connect(client, mqtt_ready)
        client.loop_start()
        wait_for(lambda: all(published(info) for info in infos), 30, "sent after CONNACK")
        assert live.delivered(len(messages)) == messages
    finally:
        live.close()
        close(client)


def test_refused_publishes_take_pahos_path_and_are_reported(mqtt_ready: Settings,
                                                            unique: str) -> None:
    worker = as_account(mqtt_ready, "worker", service_password("worker"))
    client = lean_client(worker)
    seen = Subscriber(mqtt_ready, f"+/t-{unique}/#")
    allowed = [(f"analytics/t-{unique}/d{i}/temperature", b"ok %d" % i) for i in range(50)]
    denied = [(f"sensors/t-{unique}/d{i}/temperature", b"no %d" % i) for i in range(10)]
    batch = [m for pair in zip(allowed[:10], denied, strict=True) for m in pair] + allowed[10:]
    try:
        infos = client.publish_many(batch, qos=1, retain=False)
        for info in infos:
            info.wait_for_publish(30)
        assert all(info.is_published() for info in infos), "paho completes refusals too"
        reasons = {topic: info.reason_code for (topic, _), info in zip(batch, infos, strict=True)
                   if isinstance(info, PublishInfo) and info.reason_code is not None}
        assert set(reasons) == {topic for topic, _ in denied}
        assert {code.value for code in reasons.values()} == {NOT_AUTHORIZED}
        assert client.refused_total == len(denied)
        assert client.paho_handled.get(0x40) == len(denied), "refusals go through paho"

        # The scoring path reports them by topic, without raising.
        assert publish_all(client, denied[:3] + allowed[:2], timeout_s=30) == [
            (topic, "Not authorized") for topic, _ in denied[:3]]
        wait_for(lambda: len(seen.received()) >= len(allowed) + 2, 15, "accepted messages")
        assert {t for t, _, _ in seen.received()} == {t for t, _ in allowed}
    finally:
        seen.close()
        close(client)


def test_messages_beyond_max_inflight_go_out_as_acks_return(mqtt_ready: Settings,
                                                             unique: str) -> None:
    root = f"t/{unique}/inflight/"
    live = Subscriber(mqtt_ready, root + "#")
    publisher = lean_client(mqtt_ready, max_inflight=10)
    in_flight: list[int] = []
    paho_ack = publisher._do_on_publish

    def watch(mid: int, *args: Any) -> mqtt.MQTTErrorCode:
        in_flight.append(publisher._inflight_messages)  # under _out_message_mutex here
        return paho_ack(mid, *args)

    publisher._do_on_publish = watch  # type: ignore[method-assign,assignment]
    messages = [(f"{root}m{i}", b"%d" % i) for i in range(500)]
    try:
        infos = publisher.publish_many(messages, qos=1)
        with publisher._out_message_mutex:
            states = [m.state for m in publisher._out_messages.values()]
        assert states.count(MessageState.MQTT_MS_QUEUED) >= len(messages) - 10 - len(in_flight)
        for info in infos:
            info.wait_for_publish(30)
        assert all(info.is_published() for info in infos)
        assert len(in_flight) == len(messages) and max(in_flight) <= 10
        assert live.delivered(len(messages)) == messages
    finally:
        live.close()
        close(publisher)


def test_pahos_publish_and_publish_many_share_the_window(mqtt_ready: Settings,
                                                          unique: str) -> None:
    """Messages paho's own publish() queued (found by paho's scan) and those
    publish_many queued (its id queue) all go out, the window never exceeded."""
    root = f"t/{unique}/mixed/"
    live = Subscriber(mqtt_ready, root + "#")
    publisher = lean_client(mqtt_ready, max_inflight=5)
    messages = [(f"{root}m{i}", b"%d" % i) for i in range(300)]
    try:
        infos = [publisher.publish(t, p, qos=1) for t, p in messages[:20]]
        infos += publisher.publish_many(messages[20:150], qos=1)
        infos += [publisher.publish(t, p, qos=1) for t, p in messages[150:170]]
        infos += publisher.publish_many(messages[170:], qos=1)
        with publisher._out_message_mutex:
            assert publisher._inflight_messages <= 5
        for info in infos:
            info.wait_for_publish(30)
        assert all(info.is_published() for info in infos)
        got = live.delivered(len(messages))
        assert sorted(got) == sorted(messages) and len(got) == len(messages)
        with publisher._out_message_mutex:
            assert not publisher._out_messages and publisher._inflight_messages == 0
    finally:
        live.close()
        close(publisher)


def published(info: mqtt.MQTTMessageInfo) -> bool:
    # is_published() raises for a message queued while disconnected (rc NO_CONN,
    # as paho's publish() leaves it) even after it went out on the reconnect.
    return bool(info._published)


def test_broker_restart_mid_stream_retransmits_what_was_in_flight(mqtt_ready: Settings,
                                                                  unique: str) -> None:
    root = f"t/{unique}/restart/"
    # Persistent, so what the broker accepted before stopping (saved on SIGTERM) waits for it.
    subscriber = Subscriber(mqtt_ready, root + "#", f"lean-sub-{unique}", persistent=True)
    client = lean_client(mqtt_ready)
    awaiting_ack_at_drop: list[int] = []

    def on_disconnect(*_: Any) -> None:
        with client._out_message_mutex:
            awaiting_ack_at_drop.append(sum(
                m.state == MessageState.MQTT_MS_WAIT_FOR_PUBACK
                for m in client._out_messages.values()))

    client.on_disconnect = on_disconnect
    sent: list[tuple[str, bytes]] = []
    infos: list[mqtt.MQTTMessageInfo] = []
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:
        while streaming.is_set():
            if len(client._out_messages) > 3000:  # bounded, as the worker's batches are
                time.sleep(0.01)
                continue
            batch = [(f"{root}m{len(sent) + k}", b"%d" % (len(sent) + k)) for k in range(100)]
            infos.extend(client.publish_many(batch, qos=1, retain=False))
            sent.extend(batch)
            time.sleep(0.005)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        time.sleep(0.5)
        # Stall the network thread, so the batches queued next are in flight (paho's
        # state: awaiting PUBACK) but never reach the broker, which then stops.
        client.acks_released.clear()
        assert client.acks_held.wait(10), "no PUBACK came"
        time.sleep(0.3)
        with service_stopped("mosquitto"):
            client.acks_released.set()
            time.sleep(1.0)
        wait_for(client.is_connected, 60, "the publisher reconnected")
        time.sleep(1.0)
    finally:
        client.acks_released.set()
        streaming.clear()
        streamer.join(10)
    try:
        wait_for(lambda: all(published(info) for info in infos), 60, "every message acknowledged")
        assert awaiting_ack_at_drop and awaiting_ack_at_drop[0] > 0, \
            "nothing was in flight when the broker stopped: the test proved nothing"
        wait_for(lambda: {p for _, p, _ in subscriber.received()} >= {p for _, p in sent}, 60,
                 f"{len(sent)} messages delivered at least once")
        assert {(t, p) for t, p, _ in subscriber.received()} == set(sent)
        assert client.refused_total == 0
    finally:
        subscriber.client.on_connect = None  # the next line ends the session for good
        subscriber.close()
        close(client)
