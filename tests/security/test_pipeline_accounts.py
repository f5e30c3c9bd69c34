"""The pipeline with access control as `make up` runs it: bridge, model worker
and API each connect with their own account (MQTT_USERNAME + MQTT_PASSWORD_FILE),
the simulator's device claims a generated device account, and its readings
reach MongoDB and come back on `analytics/{device}/...`, which that device may
read and another device may not. Topics are the real ones (no test prefix: the
ACL is written for them), so the test's device is one nobody else uses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import MongoClient

from contracts.settings import Settings
from tests.security.conftest import Probe, as_account, devices, stack_secrets
from tests.support import REPO, ServiceProcess, demo_models, free_port, service_env, wait_for

TICKS = 5
ACCOUNT = {"bridge": "bridge", "model_worker": "worker", "api": "api"}


@pytest.fixture
def device_file(tmp_path: Path) -> tuple[Path, str, str]:
    """A devices.csv holding one generated account, so the simulator's claim is ours."""
    device_id, password = devices(1)[0]
    path = tmp_path / "devices.csv"
    path.write_text(f"{device_id},{password}\n")
    return path, device_id, password


@pytest.fixture
def pipeline(services: Settings, unique: str,
             tmp_path: Path) -> Iterator[dict[str, ServiceProcess]]:
    models = demo_models(tmp_path / "models")
    base = service_env(
        services, unique, MODEL_PATH=str(models),
        # The ACL is written for the real topics: no test prefix here.
        BRIDGE_TOPIC_PREFIX="", SIMULATOR_TOPIC_PREFIX="",
        MQTT_RESULTS_TOPIC="analytics/{device_id}/{sensor}",
        ANALYTICS_MQTT_WINDOW_TOPIC="analytics/{device_id}/{sensor}/window",
        ANALYTICS_MQTT_STATS_TOPIC="analytics/{device_id}/{sensor}/stats",
        BRIDGE_CLIENT_ID=f"bridge-{unique}", BRIDGE_SESSION_EXPIRY_S="60",
        BRIDGE_HTTP_PORT=str(free_port()), BRIDGE_SINK_BATCH_WAIT_MS="50",
        WORKER_INSTANCE_ID=f"worker-{unique}", WORKER_HTTP_PORT=str(free_port()),
        WORKER_BATCH_WAIT_MS="50", API_PORT=str(free_port()),
        # None of the services may fall back to the operator's password.
        MQTT_PASSWORD="not-the-password")
    secrets = stack_secrets()
    procs = {}
    for module, port_var in (("bridge", "BRIDGE_HTTP_PORT"), ("model_worker", "WORKER_HTTP_PORT"),
                             ("api", "API_PORT")):
        env = {**base, "MQTT_USERNAME": ACCOUNT[module],
               "MQTT_PASSWORD_FILE": str(secrets / f"{ACCOUNT[module]}.password")}
        procs[module] = ServiceProcess(module, env, tmp_path / f"{module}.log",
                                       http_port=int(base[port_var]))
    for proc in procs.values():
        proc.start()
    try:
        procs["bridge"].wait_ready(90)
        procs["model_worker"].wait_ready(90)
        procs["api"].wait_ready(60)  # /ready: includes its MQTT subscription as `api`
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()


def test_services_and_a_device_with_their_own_accounts(
        pipeline: dict[str, ServiceProcess], services: Settings, unique: str,
        mongo: MongoClient[dict[str, Any]], device_file: tuple[Path, str, str]) -> None:
    path, device_id, password = device_file
    other_id, other_password = devices(2)[0]
    own = Probe(as_account(services, device_id, password), "own-results")
    other = Probe(as_account(services, other_id, other_password), "other-results")
    try:
        assert own.subscribe(f"analytics/{device_id}/#") == 1
        assert other.subscribe("analytics/#") == 1
        sim_env = {**pipeline["bridge"].env, "MQTT_USERNAME": "edgepipe",
                   "MQTT_PASSWORD_FILE": "", "MQTT_PASSWORD": services.mqtt_password
                   .get_secret_value()}
        simulator = subprocess.run(
            [sys.executable, "-m", "edge_simulator", "--devices", "1", "--rate", "5",
             "--count", str(TICKS), "--sensors", "temperature", "--credentials", str(path),
             "--no-http", "--seed", "7"],
            cwd=REPO, env=sim_env, capture_output=True, text=True, timeout=120)
        assert simulator.returncode == 0, simulator.stderr[-2000:]
        summary = json.loads(simulator.stdout.strip().splitlines()[-1])["summary"]
        assert summary["acked"] == TICKS and summary["refused"] == 0, summary
        assert not list((path.parent / "devices.csv.claims").iterdir()), "claim not released"

        db = mongo[services.mongo_db]
        wait_for(lambda: db.analytics.count_documents({}) == TICKS, 90,
                 f"{TICKS} results in MongoDB (bridge: {pipeline['bridge'].log_tail()}; "
                 f"worker: {pipeline['model_worker'].log_tail()})")
        assert db.readings.distinct("device_id") == [device_id]
        stored = {d["_id"] for d in db.analytics.find({}, {"_id": 1})}

        def own_results() -> set[str]:
            return {orjson.loads(p).get("event_id") for p, t in own.payloads().items()
                    if t == f"analytics/{device_id}/temperature"}

        wait_for(lambda: stored <= own_results(), 30, "the results on the device's own topic")
        # The other device saw nothing of this device, not even the retained results.
        assert not [t for t in other.payloads().values() if f"/{device_id}/" in t]
        status, body = pipeline["api"].get(f"/readings?device_id={device_id}&sensor=temperature")
        assert status == 200 and len(body["items"]) == TICKS, body
    finally:
        own.close()
        other.close()
    for name, proc in pipeline.items():
        assert proc.terminate() == 0, f"{name} did not exit cleanly:\n{proc.log_tail()}"
