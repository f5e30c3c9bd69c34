"""Mosquitto's access control on the real local broker (mosquitto/acl, the
password file local_stack renders from the generated accounts): devices write
only `sensors/{own id}/#` and read only `analytics/{own id}/#`, service
accounts only do their job, and unknown clients are refused.

Mosquitto 2.0.11 answers an MQTT 5 client precisely: a publish the ACL refuses
gets PUBACK reason 135 (not authorized) and reaches no subscriber; a refused
CONNECT, anonymous or with a wrong password alike, gets CONNACK 135; a
subscription outside the account's topics is acknowledged, but nothing the
account may not read is ever delivered on it, retained messages included."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest

from contracts.settings import Settings
from tests.security.conftest import (
    NOT_AUTHORIZED,
    Probe,
    as_account,
    devices,
    service_password,
)

ACCEPTED = (0, 16)  # success; "no matching subscribers" is a success too


def marker(label: str) -> bytes:
    return orjson.dumps({"marker": f"{label}-{uuid.uuid4().hex}", "value": 1.0})


@pytest.fixture
def operator_sensors(mqtt_ready: Settings) -> Iterator[Probe]:
    probe = Probe(mqtt_ready, "operator")
    assert probe.connack == 0
    assert probe.subscribe("sensors/#") in (0, 1)
    yield probe
    probe.close()


def test_device_cannot_publish_into_another_devices_topic(
        mqtt_ready: Settings, operator_sensors: Probe) -> None:
    (a_id, a_pw), (b_id, _) = devices(2)
    device_a = Probe(as_account(mqtt_ready, a_id, a_pw), "dev-a")
    try:
        assert device_a.connack == 0
        spoof, own = marker("spoof"), marker("own")
        # The spoof goes first: one client's messages reach a subscriber in order, so
        # once `own` has arrived, a forwarded spoof would already be there.
        assert device_a.publish(f"sensors/{b_id}/temperature", spoof) == NOT_AUTHORIZED
        assert device_a.publish(f"sensors/{a_id}/temperature", own) in ACCEPTED
        assert operator_sensors.wait_payload(own), "the device's own reading never arrived"
        seen = operator_sensors.payloads()
        assert seen[own] == f"sensors/{a_id}/temperature"
        assert spoof not in seen
        # Nor anywhere outside its own subtree.
        assert device_a.publish("sensors", marker("root")) == NOT_AUTHORIZED
        assert device_a.publish("analytics/x/y", marker("x")) == NOT_AUTHORIZED
    finally:
        device_a.close()


def test_device_reads_only_its_own_results(mqtt_ready: Settings) -> None:
    (a_id, a_pw), (b_id, _) = devices(2)
    worker = Probe(as_account(mqtt_ready, "worker", service_password("worker")), "worker")
    device_a = Probe(as_account(mqtt_ready, a_id, a_pw), "dev-a-reader")
    run = uuid.uuid4().hex[:8]
    retained_b = f"analytics/{b_id}/sec{run}/retained"
    try:
        assert worker.connack == 0 and device_a.connack == 0
        # Retained before anyone subscribes: delivery at subscribe time is checked too.
        assert worker.publish(retained_b, marker("retained-b"), retain=True) in ACCEPTED
        # Mosquitto 2.0.11 grants the subscription (SUBACK 1, granted QoS 1) and
        # checks every message against the ACL at delivery instead.
        assert device_a.subscribe(f"analytics/{b_id}/#") == 1
        assert device_a.subscribe("analytics/#") == 1
        for_b, for_a = marker("for-b"), marker("for-a")
        assert worker.publish(f"analytics/{b_id}/sec{run}", for_b) in ACCEPTED
        assert worker.publish(f"analytics/{a_id}/sec{run}", for_a) in ACCEPTED
        assert device_a.wait_payload(for_a), "the device's own result never arrived"
        time.sleep(0.5)  # anything else in flight would have arrived by now
        topics = set(device_a.payloads().values())
        assert all(topic.startswith(f"analytics/{a_id}/") for topic in topics), topics
        assert for_b not in device_a.payloads()
    finally:
        worker.publish(retained_b, b"", retain=True)  # clear the retained message
        worker.close()
        device_a.close()


def test_anonymous_client_is_refused(mqtt_ready: Settings) -> None:
    probe = Probe(as_account(mqtt_ready, None, None), "anonymous")
    try:
        assert probe.connack == NOT_AUTHORIZED
    finally:
        probe.close()


@pytest.mark.parametrize("who", ["device", "service", "unknown"])
def test_wrong_password_is_refused(mqtt_ready: Settings, who: str) -> None:
    user = {"device": devices(1)[0][0], "service": "bridge", "unknown": "nobody"}[who]
    probe = Probe(as_account(mqtt_ready, user, "not-the-password"), f"wrong-{who}")
    try:
        assert probe.connack == NOT_AUTHORIZED  # Mosquitto 2.0 does not say 134 here
        assert not probe.client.is_connected()
    finally:
        probe.close()


@pytest.mark.parametrize(("account", "topic", "allowed"), [
    ("bridge", "sensors/{device}/temperature", False),  # reads devices, never writes for them
    ("bridge", "analytics/{device}/temperature", False),
    ("worker", "sensors/{device}/temperature", False),
    ("worker", "analytics/{device}/temperature", True),
    ("api", "analytics/{device}/temperature", False),
    ("gateway", "sensors/{device}/temperature", False),
    ("gateway", "sensor-logger", True),
    ("gateway", "Image", True),
])
def test_service_accounts_only_do_their_job(
        mqtt_ready: Settings, account: str, topic: str, allowed: bool) -> None:
    device_id = devices(1)[0][0]
    probe = Probe(as_account(mqtt_ready, account, service_password(account)), account)
    try:
        assert probe.connack == 0
        # An empty, non-retained payload: the bridge would dead-letter a real one.
        code = probe.publish(topic.format(device=device_id), b"")
        assert (code in ACCEPTED) is allowed, code
        if not allowed:
            assert code == NOT_AUTHORIZED
    finally:
        probe.close()
