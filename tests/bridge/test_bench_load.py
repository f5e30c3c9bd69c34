"""The bridge bench's lean load generator (`python -m bench.mqtt_load`) speaks
real MQTT: against the real Mosquitto every message is acknowledged and
reaches a QoS 1 subscriber unchanged and in order, and a refused login is an
error, not a silent zero."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from contracts.clients import mqtt_client, mqtt_connect
from contracts.settings import Settings
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]


def run_load(settings: Settings, topic: str, count: int, password: str,
             *extra: str) -> subprocess.CompletedProcess[str]:
    """The publisher as bench_bridge runs it: password, `ready`, go, one JSON line."""
    args = [sys.executable, "-m", "bench.mqtt_load", "--host", settings.mqtt_host,
            "--port", str(settings.mqtt_port), "--username", settings.mqtt_username,
            "--client-id", f"load-{topic.replace('/', '-')}", "--topic", topic,
            "--count", str(count), *extra]
    return subprocess.run(args, cwd=REPO, input=f"{password}\ngo\n", capture_output=True,
                          text=True, timeout=60)


def test_publishes_every_message_through_mosquitto_within_the_window(
        mqtt_ready: Settings, unique: str) -> None:
    settings = mqtt_ready
    root = f"t/{unique}/"
    got: list[bytes] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_client: Any, _userdata: Any, msg: Any) -> None:
        with lock:
            got.append(bytes(msg.payload))

    sub = mqtt_client(settings)
    sub.on_message = on_message
    sub.on_connect = lambda c, *_: c.subscribe(root + "#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    mqtt_connect(sub, settings)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK"
        # A window smaller than the count and a slice that does not divide it:
        # the writer waits for PUBACKs many times, then sends a short tail.
        done = run_load(settings, root + "sensors/dev0/temp", 700,
                        settings.mqtt_password.get_secret_value(),
                        "--window", "64", "--slice", "48")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "ready"
        assert json.loads(lines[-1])["acked"] == 700
        wait_for(lambda: len(got) >= 700, 20, "the subscriber got every message")
        with lock:
            readings = [orjson.loads(p) for p in got]
        assert [r["seq"] for r in readings] == list(range(700))
        assert all(r["value"] == float(r["seq"]) and r["ts"] > 0 for r in readings)
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_paced_publishing_stamps_each_reading_when_sent(mqtt_ready: Settings,
                                                       unique: str) -> None:
    settings = mqtt_ready
    root = f"t/{unique}/"
    got: list[bytes] = []
    subscribed = threading.Event()
    sub = mqtt_client(settings)
    sub.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    sub.on_connect = lambda c, *_: c.subscribe(root + "#", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()
    mqtt_connect(sub, settings)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK"
        done = run_load(settings, root + "sensors/pace/temp", 200,
                        settings.mqtt_password.get_secret_value(), "--rate", "1000")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["acked"] == 200
        wait_for(lambda: len(got) >= 200, 20, "the subscriber got every paced message")
        stamps = [orjson.loads(p)["ts"] for p in got]
        # Stamped as sent (not all before the clock started): the pacing puts
        # the last at least 0.199 s after the first, however slow the machine.
        assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 0.19
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_refused_login_fails_the_publisher(mqtt_ready: Settings, unique: str) -> None:
    done = run_load(mqtt_ready, f"t/{unique}/x", 10, "wrong password")
    assert done.returncode != 0
    assert "LoadError" in done.stderr and "ready" not in done.stdout
