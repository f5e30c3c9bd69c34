"""The simulator against real Mosquitto: the shared broker for ordinary runs,
a throwaway one (own port) for the test that kills and restarts a broker."""

from __future__ import annotations

import itertools
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from bridge.codecs import decode
from bridge.routes import load_routes, match_route
from contracts.clients import mqtt_client, mqtt_connect
from contracts.settings import Settings
from edge_simulator.app import run_simulator
from edge_simulator.cli import parse_config
from edge_simulator.fleet import Snapshot
from edge_simulator.local_broker import ThrowawayBroker

REPO = Path(__file__).resolve().parents[2]
SEED_CSV = REPO.parent / "shared" / "data" / "seed_demo_data.csv"

pytestmark = pytest.mark.services


class Collector:
    """A QoS 1 subscriber that records every message it gets."""

    def __init__(self, settings: Settings, topic: str, client_id: str,
                 persistent: bool = False) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt_client(settings, client_id, persistent=persistent)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        mqtt_connect(self.client, settings)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscription not confirmed in 10 s"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def wait_for(self, count: int, timeout: float) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    break
            time.sleep(0.05)
        time.sleep(0.3)  # a surplus (duplicates) would show up now
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for collector in made:
        collector.close()


def simulate(settings: Settings, argv: list[str], **kwargs: Any) -> Snapshot:
    config = parse_config([*argv, "--drain-timeout", "15"], settings)
    return run_simulator(config, settings, threading.Event(), report=lambda _: None, **kwargs)


def test_devices_publish_distinct_ids_and_every_message_is_acked(
        mqtt_ready: Settings, unique: str, collectors: list[Collector]) -> None:
    prefix = f"t/{unique}/"
    collector = Collector(mqtt_ready, f"{prefix}#", f"sub-{unique}")
    collectors.append(collector)
    ports: list[int] = []
    scraped: dict[str, bytes] = {}

    def scrape(port: int) -> None:
        ports.append(port)
        for path in ("health", "metrics"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as r:
                scraped[path] = r.read()

    final = simulate(mqtt_ready, [
        "--devices", "6", "--rate", "5", "--count", "5", "--sensors", "temperature,humidity",
        "--device-prefix", f"d{unique}", "--topic-prefix", prefix, "--seed", "1",
        "--dropout-rate", "0", "--http-port", "0"], ops_port_ready=scrape)
    expected = 6 * 5 * 2
    assert (final.sent, final.acked, final.dropped, final.queued) == (expected, expected, 0, 0)
    got = collector.wait_for(expected, timeout=15)
    assert len(got) == expected
    devices = {m.topic.split("/")[3] for m in got}
    assert devices == {f"d{unique}-{i}" for i in range(6)}
    seqs = sorted(orjson.loads(m.payload)["seq"] for m in got if m.topic.endswith("/humidity"))
    assert seqs == sorted(list(range(5)) * 6)
    assert scraped["health"] == b'{"status":"ok"}'
    assert b"simulator_devices 6.0" in scraped["metrics"]


def test_seed_csv_replays_values_1_to_38_in_order_with_times(
        mqtt_ready: Settings, unique: str, collectors: list[Collector]) -> None:
    prefix = f"t/{unique}/"
    collector = Collector(mqtt_ready, f"{prefix}Image", f"sub-{unique}")
    collectors.append(collector)
    started = datetime.now(UTC).replace(microsecond=0)
    final = simulate(mqtt_ready, [
        "--source", "csv", "--csv", str(SEED_CSV), "--format", "image", "--rate", "1",
        "--speed", "40", "--jitter", "0", "--device-prefix", f"seed{unique}",
        "--topic-prefix", prefix, "--no-http"])
    assert final.acked == 38
    got = [orjson.loads(m.payload) for m in collector.wait_for(38, timeout=15)]
    assert [doc["image"] for doc in got] == [str(v) for v in range(1, 39)]
    assert {doc["sensorId"] for doc in got} == {f"seed{unique}-0"}
    times = [datetime.strptime(doc["collectedAt"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
             for doc in got]
    # No time column: the rate sets device times, one a second, from the start.
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [1.0] * 37
    assert abs((times[0] - started).total_seconds()) <= 3


def test_sensor_logger_messages_decode_through_the_bridge_codec(
        mqtt_ready: Settings, unique: str, collectors: list[Collector]) -> None:
    prefix = f"t/{unique}/"
    collector = Collector(mqtt_ready, f"{prefix}sensor-logger", f"sub-{unique}")
    collectors.append(collector)
    final = simulate(mqtt_ready, [
        "--format", "sensor-logger", "--devices", "2", "--rate", "20", "--batch", "10",
        "--count", "30", "--dropout-rate", "0", "--device-prefix", f"phone{unique}",
        "--topic-prefix", prefix, "--no-http"])
    assert final.acked == 2 * 3  # 30 ticks in batches of 10
    got = collector.wait_for(6, timeout=15)
    routes = load_routes(mqtt_ready, topic_prefix=prefix)
    readings = []
    for message in got:
        matched = match_route(routes, message.topic)
        assert matched is not None, message.topic
        route, fields = matched
        assert route.codec == "sensor_logger"
        batch = decode(route, fields, message.topic, bytes(message.payload), qos=message.qos,
                       received_at_ns=time.time_ns(),
                       max_payload_bytes=mqtt_ready.bridge_max_payload_bytes)
        body = orjson.loads(message.payload)
        assert len(batch) == len(body["payload"]) == 30  # 10 ticks x 3 sensors
        for reading, entry in zip(batch, body["payload"], strict=True):
            assert reading.device_id == body["deviceId"]
            assert reading.sensor == entry["name"]
            assert reading.ts_ns == entry["time"]
        readings.extend(batch)
    assert len(readings) == 180
    assert {r.device_id for r in readings} == {f"phone{unique}-0", f"phone{unique}-1"}
    assert {r.sensor for r in readings} == {"accelerometer", "gyroscope", "barometer"}
    accel = next(r for r in readings if r.sensor == "accelerometer")
    assert set(accel.values or {}) == {"x", "y", "z"}
    assert len({r.event_id for r in readings}) == 180


def test_broker_restart_loses_nothing_the_outbox_holds(
        mqtt_ready: Settings, unique: str, tmp_path: Path,
        collectors: list[Collector]) -> None:
    broker = ThrowawayBroker(tmp_path, mqtt_ready.mqtt_username,
                             mqtt_ready.mqtt_password.get_secret_value()).start()
    try:
        settings = mqtt_ready.model_copy(update={"mqtt_host": "127.0.0.1",
                                                 "mqtt_port": broker.port})
        prefix = f"t/{unique}/"
        collector = Collector(settings, f"{prefix}#", f"sub-{unique}", persistent=True)
        collectors.append(collector)
        devices, rate, ticks = 4, 20, 160  # 8 s of sending
        result: list[Snapshot] = []
        runner = threading.Thread(target=lambda: result.append(simulate(settings, [
            "--devices", str(devices), "--rate", str(rate), "--count", str(ticks),
            "--sensors", "temperature", "--dropout-rate", "0", "--jitter", "0",
            "--device-prefix", f"r{unique}", "--topic-prefix", prefix, "--no-http"])))
        runner.start()
        time.sleep(2.5)
        broker.stop()  # SIGTERM: mosquitto saves its persistence file
        time.sleep(2.0)  # devices keep sampling into their outboxes
        broker.start()
        runner.join(timeout=60)
        assert not runner.is_alive(), "simulator did not finish within 60 s"
        [final] = result
        expected = devices * ticks
        assert final.reconnects >= devices
        assert final.dropped == 0 and final.queued <= 0
        assert final.acked >= expected  # resent in-flight messages may be acked twice
        got = collector.wait_for(expected, timeout=30)
        seen = {(m.topic.split("/")[3], orjson.loads(m.payload)["seq"]) for m in got}
        missing = {(f"r{unique}-{d}", s) for d in range(devices) for s in range(ticks)} - seen
        assert not missing, f"{len(missing)} readings lost, e.g. {sorted(missing)[:5]}"
    finally:
        broker.stop()
