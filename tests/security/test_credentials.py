"""Credentials generated at set-up (contracts/credentials.py): idempotent
creation, and device slots claimed by simulators without two of them ever
holding the same account. Pure file logic, no service needed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.credentials import (
    SERVICE_ACCOUNTS,
    CredentialsError,
    claim_devices,
    claims_dir,
    init,
    read_devices,
    release_devices,
)
from contracts.settings import Settings
from edge_simulator.cli import parse_config
from tests.conftest import REPO


def test_init_creates_private_files_and_keeps_existing_passwords(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    report = init(out, devices=3)
    assert report.devices == 3
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in SERVICE_ACCOUNTS:
        assert stat.S_IMODE((out / f"{name}.password").stat().st_mode) == 0o600
    first = read_devices(out / "devices.csv")
    assert [d for d, _ in first] == ["device-0", "device-1", "device-2"]
    assert len({p for _, p in first}) == 3 and all(len(p) >= 32 for _, p in first)
    bridge = (out / "bridge.password").read_text()

    again = init(out, devices=5)
    assert again.created == ["device-3", "device-4"]
    assert read_devices(out / "devices.csv")[:3] == first  # nothing regenerated
    assert (out / "bridge.password").read_text() == bridge
    users = (out / "mosquitto_users").read_text().splitlines()
    assert {u.split(":", 1)[0] for u in users} == {*SERVICE_ACCOUNTS, *(f"device-{i}"
                                                                       for i in range(5))}
    assert init(out, devices=2).created == []  # never shrinks


@pytest.mark.parametrize("prefix", ["", "a/b", "dev+", "x#", "$sys", "a b", "a:b"])
def test_init_refuses_prefixes_that_cannot_be_user_names_or_topic_levels(
        tmp_path: Path, prefix: str) -> None:
    with pytest.raises(CredentialsError, match="device prefix"):
        init(tmp_path, devices=1, device_prefix=prefix)


def test_claims_are_exclusive_and_come_back_to_their_owner(tmp_path: Path) -> None:
    init(tmp_path, devices=4)
    devices = tmp_path / "devices.csv"
    one = claim_devices(devices, 2, owner="host-a:1")
    two = claim_devices(devices, 1, owner="host-b:1")
    assert not {d for d, _ in one} & {d for d, _ in two}
    # A restarted container (same host name, PID 1 again) gets its own slots back.
    assert claim_devices(devices, 2, owner="host-a:1") == one
    with pytest.raises(CredentialsError, match="only 1 free for 2 devices"):
        claim_devices(devices, 2, owner="host-c:1")
    # The failed claim gave back the one slot it had taken.
    holders = {p.read_text().strip() for p in claims_dir(devices).iterdir()}
    assert holders == {"host-a:1", "host-b:1"}
    assert len(claim_devices(devices, 1, owner="host-d:1")) == 1
    release_devices(devices, [d for d, _ in one], owner="host-a:1")
    assert {d for d, _ in claim_devices(devices, 2, owner="host-c:1")} == {d for d, _ in one}


def test_a_dead_local_process_loses_its_claims(tmp_path: Path) -> None:
    init(tmp_path, devices=1)
    devices = tmp_path / "devices.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = os.uname().nodename
    claim_devices(devices, 1, owner=f"{host}:{dead}")
    assert [d for d, _ in claim_devices(devices, 1, owner=f"{host}:{os.getpid()}")] == [
        "device-0"]
    # A live process on another host keeps its claim: that host's pids mean nothing here.
    release_devices(devices, ["device-0"], owner=f"{host}:{os.getpid()}")
    claim_devices(devices, 1, owner=f"elsewhere:{dead}")
    with pytest.raises(CredentialsError):
        claim_devices(devices, 1, owner=f"{host}:{os.getpid()}")


def test_cli_init_is_standard_library_only(tmp_path: Path) -> None:
    """local_stack runs it with the system Python before .venv exists: -S keeps
    site-packages out, so a third-party import would fail here."""
    done = subprocess.run([sys.executable, "-S", "-m", "contracts.credentials", "init",
                           "--out", str(tmp_path / "s"), "--devices", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 device accounts" in done.stdout


def test_simulator_with_credentials_sends_only_what_a_device_may(tmp_path: Path) -> None:
    settings = Settings()
    with pytest.raises(SystemExit):
        parse_config(["--credentials", str(tmp_path / "devices.csv"),
                      "--format", "sensor-logger"], settings)
    with pytest.raises(SystemExit):
        parse_config(["--credentials", str(tmp_path / "devices.csv"),
                      "--topic-prefix", "t/x/"], settings)
    config = parse_config(["--credentials", str(tmp_path / "devices.csv")], settings)
    assert config.credentials_file == tmp_path / "devices.csv"
