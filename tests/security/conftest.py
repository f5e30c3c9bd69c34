"""Helpers of the access-control tests: the accounts local_stack generated
(`.stack/secrets/`, see contracts/credentials.py) and a small MQTT client that
reports the broker's reason codes, which is what these tests assert on."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from pydantic import SecretStr

from contracts.clients import mqtt_client, mqtt_connect
from contracts.credentials import read_devices
from contracts.settings import Settings
from tests.conftest import REPO

SECRETS = REPO / ".stack" / "secrets"
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87


def stack_secrets() -> Path:
    if not (SECRETS / "devices.csv").is_file():
        pytest.fail(f"no generated accounts in {SECRETS}; start the local services with "
                    "`bash local_stack/stack.sh up` (it generates them)", pytrace=False)
    return SECRETS


def service_password(name: str) -> str:
    return (stack_secrets() / f"{name}.password").read_text().strip()


def devices(count: int) -> list[tuple[str, str]]:
    """The last `count` device accounts: `make up` claims from the first."""
    pairs = read_devices(stack_secrets() / "devices.csv")
    assert len(pairs) >= count, f"need {count} device accounts, {len(pairs)} generated"
    return pairs[-count:]


def as_account(settings: Settings, user: str | None, password: str | None) -> Settings:
    return settings.model_copy(update={
        "mqtt_username": user, "mqtt_password": SecretStr(password or "")})


class Probe:
    """One MQTT 5 connection that records CONNACK, SUBACK and PUBACK reason
    codes and every message received (topic, payload)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.connack: int | None = None
        self.subacks: list[int] = []
        self.pubacks: dict[int, int] = {}
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt_client(settings, f"sec-{name}-{time.monotonic_ns() % 10**9}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        # A refused client must not retry in the background during the test.
        self.client.reconnect_delay_set(min_delay=60, max_delay=60)
        mqtt_connect(self.client, settings)
        self.client.loop_start()
        assert self._connected.wait(10), "no CONNACK within 10 s"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self.connack = reason.value
        self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        self.subacks.extend(r.value for r in reasons)
        self._subscribed.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._lock:
            self.pubacks[mid] = reason.value

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, topic_filter: str) -> int:
        """Subscribe at QoS 1; returns the SUBACK reason code."""
        self._subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(10), f"no SUBACK for {topic_filter}"
        return self.subacks[-1]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1; returns the PUBACK reason code (0 or 16 = accepted)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self._lock:
                if info.mid in self.pubacks:
                    return self.pubacks[info.mid]
            time.sleep(0.02)
        raise AssertionError(f"no PUBACK for {topic}")

    def payloads(self) -> dict[bytes, str]:
        with self._lock:
            return {payload: topic for topic, payload in self.received}

    def wait_payload(self, payload: bytes, timeout_s: float = 10) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if payload in self.payloads():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
