"""MQTT over TLS with the certificates generated at set-up. The test runs its
own Mosquitto (the Debian binary local_stack uses) with a plain and a TLS
listener on free ports, the stack's password file and ACL, and the generated
CA and server certificate, so it does not depend on MQTT_TLS_PORT being set
for the shared broker."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from contracts.clients import mqtt_client, mqtt_connect
from contracts.errors import ServiceUnavailable
from contracts.settings import Settings
from tests.conftest import REPO
from tests.security.conftest import Probe, as_account, devices, stack_secrets
from tests.support import free_port, wait_for

STACK_MOSQUITTO = REPO / ".stack" / "mosquitto"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def tls_broker(mqtt_ready: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    """(settings pointing at the TLS listener with MQTT_TLS on, the CA file)."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed; `bash local_stack/stack.sh up` installs it",
                    pytrace=False)
    tls = stack_secrets() / "tls"
    plain_port, tls_port = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join([
        "allow_anonymous false",
        f"password_file {STACK_MOSQUITTO / 'passwd'}",
        f"acl_file {STACK_MOSQUITTO / 'acl'}",
        f"user {getpass.getuser()}",
        f"listener {plain_port} 127.0.0.1",
        f"listener {tls_port} 127.0.0.1",
        f"cafile {tls / 'ca.crt'}",
        f"certfile {tls / 'server.crt'}",
        f"keyfile {tls / 'server.key'}",
        "",
    ]))
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_for(lambda: _listening(tls_port), 10, "the test broker's TLS listener")
        settings = mqtt_ready.model_copy(update={
            "mqtt_host": "localhost", "mqtt_port": tls_port, "mqtt_tls": True,
            "mqtt_ca_file": tls / "ca.crt"})
        yield settings, tls / "ca.crt"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_tls_with_the_generated_ca_connects_and_publishes(
        tls_broker: tuple[Settings, Path]) -> None:
    settings, _ = tls_broker
    device_id, password = devices(1)[0]
    probe = Probe(as_account(settings, device_id, password), "tls-device")
    try:
        assert probe.connack == 0
        assert probe.client.socket() is not None
        assert probe.publish(f"sensors/{device_id}/temperature", b'{"value": 1}') in (0, 16)
        # The ACL holds on the TLS listener too.
        assert probe.publish("sensors/someone-else/temperature", b"{}") == 135
    finally:
        probe.close()


def test_tls_without_the_ca_is_refused(tls_broker: tuple[Settings, Path]) -> None:
    settings, _ = tls_broker
    untrusting = settings.model_copy(update={"mqtt_ca_file": None})  # system CAs only
    client = mqtt_client(untrusting)
    with pytest.raises(ServiceUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        mqtt_connect(client, untrusting)


def test_plain_mqtt_to_the_tls_listener_gets_no_session(
        tls_broker: tuple[Settings, Path]) -> None:
    settings, _ = tls_broker
    plain = settings.model_copy(update={"mqtt_tls": False})
    client = mqtt_client(plain)
    try:
        mqtt_connect(client, plain)
    except ServiceUnavailable:
        return  # refused outright: fine
    # The TCP connection opens, but the TLS listener never answers CONNECT with CONNACK.
    for _ in range(20):
        rc = client.loop(timeout=0.1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            break
    assert not client.is_connected()
