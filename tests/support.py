"""Helpers for tests that run edgepipe services as real subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import orjson
import paho.mqtt.client as mqtt

from contracts.clients import mqtt_client, mqtt_connect
from contracts.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def demo_models(folder: Path) -> Path:
    """`folder` holding the demo model as `default.json`, made by the worker's CLI
    as a user would; returns `folder` (the worker's MODEL_PATH)."""
    made = subprocess.run([sys.executable, "-m", "model_worker", "make-demo-model",
                           "--out", str(folder / "default.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return folder


def service_env(settings: Settings, unique: str, **extra: str) -> dict[str, str]:
    """Environment that points a service subprocess at this test's topics,
    database, groups and MQTT topic root."""
    return {
        **os.environ,
        "KAFKA_TOPIC_READINGS": settings.kafka_topic_readings,
        "KAFKA_TOPIC_DLQ": settings.kafka_topic_dlq,
        "KAFKA_TOPIC_ANALYTICS": settings.kafka_topic_analytics,
        "KAFKA_TOPIC_WINDOWS": settings.kafka_topic_windows,
        "KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "MONGO_DB": settings.mongo_db,
        "BRIDGE_TOPIC_PREFIX": f"t/{unique}/",
        "BRIDGE_SHARE_GROUP": settings.bridge_share_group,
        "BRIDGE_SINK_GROUP": settings.bridge_sink_group,
        "WORKER_GROUP": settings.worker_group,
        "MQTT_RESULTS_TOPIC": f"t/{unique}/analytics/{{device_id}}/{{sensor}}",
        "ANALYTICS_MQTT_WINDOW_TOPIC": f"t/{unique}/analytics/{{device_id}}/{{sensor}}/window",
        "ANALYTICS_MQTT_STATS_TOPIC": f"t/{unique}/analytics/{{device_id}}/{{sensor}}/stats",
        "SIMULATOR_TOPIC_PREFIX": f"t/{unique}/",
        "LOG_FORMAT": "json",
        **extra,
    }


class ServiceProcess:
    """One `python -m <module> [args]` subprocess with its log in a file and
    its operations endpoint on `http_port`."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path, *,
                 args: tuple[str, ...] = (), http_port: int | None = None) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.args = args
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args],
                                         cwd=REPO, env=self.env, stdout=log, stderr=log)
        return self

    def get(self, path: str) -> tuple[int, Any]:
        """Status and JSON body of GET `path` on the service; (0, None) if unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=2) as resp:
                return resp.status, orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"null")
        except OSError:
            return 0, None

    def wait_ready(self, timeout: float = 60.0, path: str = "/ready") -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                f"{self.module} exited early:\n{self.log_tail()}")
            return self.get(path)[0] == 200

        wait_for(ready, timeout, f"{self.module} {path} (log tail: {self.log_tail()})")

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


def mqtt_subscribed(settings: Settings, topic_filter: str, on_message: Callable[..., None],
                    client_id: str | None = None, persistent: bool = False) -> mqtt.Client:
    """A started client subscribed to `topic_filter` at QoS 1 (again on every
    reconnect), once the broker acknowledged the subscription. `persistent`
    keeps its session (and what arrives meanwhile) across disconnects."""
    subscribed = threading.Event()
    client = mqtt_client(settings, client_id, persistent=persistent, session_expiry_s=300)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe(topic_filter, qos=1)
    mqtt_connect(client, settings)
    client.loop_start()
    assert subscribed.wait(10), f"MQTT subscription to {topic_filter} not acknowledged"
    return client


class MqttCollector:
    """Subscribes to `topic_filter` and keeps every JSON payload and its topic."""

    def __init__(self, settings: Settings, topic_filter: str,
                 client_id: str | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.topics: set[str] = set()
        self._lock = threading.Lock()
        self.client = mqtt_subscribed(settings, topic_filter, self._on_message, client_id)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(orjson.loads(msg.payload))
            self.topics.add(msg.topic)

    def seen(self) -> set[str]:
        """Event ids received so far."""
        with self._lock:
            return {m["event_id"] for m in self.messages}

    def wait_for(self, event_ids: set[str], timeout_s: float = 30.0) -> set[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not event_ids <= self.seen():
            time.sleep(0.2)
        return self.seen()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
