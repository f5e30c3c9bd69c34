"""The key split that lets several bridges share the load with plain
(restart-proof) subscriptions: every message has exactly one owner, the same
in every process, and a device always goes to the same bridge."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from bridge.subscriptions import split_owner
from contracts.errors import ConfigError
from contracts.settings import Settings, get_settings
from tests.support import REPO


def test_every_device_has_one_owner_and_the_share_is_even() -> None:
    devices = [f"dev-{i}" for i in range(3000)]
    owners = [split_owner(f"sensors/{d}/temperature", {"device_id": d}, 3) for d in devices]
    assert set(owners) == {0, 1, 2}
    assert all(900 < n < 1100 for n in Counter(owners).values()), Counter(owners)
    # The device decides, not the sensor: one device's readings keep their order.
    assert {split_owner(f"sensors/dev-7/{s}", {"device_id": "dev-7"}, 3)
            for s in ("temperature", "humidity", "accel")} == {owners[7]}
    # Without a device level in the topic, the topic decides.
    assert split_owner("sensor-logger", None, 3) == split_owner("sensor-logger", {}, 3)


def test_owner_is_the_same_in_another_process() -> None:
    """crc32, not Python's per-process salted hash()."""
    code = ("from bridge.subscriptions import split_owner; "
            "print([split_owner(f's/d{i}/t', {'device_id': f'd{i}'}, 4) for i in range(50)])")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, check=True, env={"PYTHONHASHSEED": "123"})
    here = [split_owner(f"s/d{i}/t", {"device_id": f"d{i}"}, 4) for i in range(50)]
    assert other.stdout.strip() == str(here)


@pytest.mark.parametrize("env", [
    {"BRIDGE_SPLIT_COUNT": "2", "BRIDGE_INSTANCE": "2"},
    {"BRIDGE_SPLIT_COUNT": "2", "BRIDGE_SHARED_SUBSCRIPTION": "true"},
    {"BRIDGE_SPLIT_COUNT": "0"},
])
def test_inconsistent_split_settings_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                 env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError):
            get_settings()
    finally:
        get_settings.cache_clear()
    monkeypatch.setenv("BRIDGE_SPLIT_COUNT", "3")
    monkeypatch.setenv("BRIDGE_INSTANCE", "2")
    monkeypatch.setenv("BRIDGE_SHARED_SUBSCRIPTION", "false")
    assert Settings().bridge_split_count == 3
