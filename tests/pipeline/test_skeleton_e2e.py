"""The walking skeleton, end to end on the real services: simulated devices
publish over MQTT, the bridge forwards into Kafka and MongoDB, the model
worker scores with a model loaded from a file, and the results reach
`iot.analytics`, Kafka `analytics` and MQTT; the API answers on the same data.
Every service is its own `python -m` process, started as a user would."""

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from contracts.settings import Settings
from tests.support import (
    REPO,
    MqttCollector,
    ServiceProcess,
    demo_models,
    free_port,
    service_env,
    wait_for,
)

DEVICES, TICKS = 2, 5


@pytest.fixture
def pipeline(services: Settings, unique: str,
             tmp_path: Path) -> Iterator[dict[str, ServiceProcess]]:
    models = demo_models(tmp_path / "models")
    env = service_env(
        services, unique,
        MODEL_PATH=str(models),
        BRIDGE_CLIENT_ID=f"bridge-{unique}", BRIDGE_SESSION_EXPIRY_S="120",
        BRIDGE_HTTP_PORT=str(free_port()), BRIDGE_SINK_BATCH_WAIT_MS="50",
        WORKER_INSTANCE_ID=f"worker-{unique}", WORKER_HTTP_PORT=str(free_port()),
        WORKER_BATCH_WAIT_MS="50",
        API_PORT=str(free_port()),
    )
    procs = {
        "bridge": ServiceProcess("bridge", env, tmp_path / "bridge.log",
                                 http_port=int(env["BRIDGE_HTTP_PORT"])),
        "model_worker": ServiceProcess("model_worker", env, tmp_path / "worker.log",
                                       http_port=int(env["WORKER_HTTP_PORT"])),
        "api": ServiceProcess("api", env, tmp_path / "api.log", http_port=int(env["API_PORT"])),
    }
    for proc in procs.values():
        proc.start()
    try:
        procs["bridge"].wait_ready(90)
        procs["model_worker"].wait_ready(90)
        procs["api"].wait_ready(60, path="/health")
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()


def test_a_published_reading_reaches_every_destination(
        pipeline: dict[str, ServiceProcess], services: Settings, unique: str,
        mongo: MongoClient[dict[str, Any]]) -> None:
    results = MqttCollector(services, f"t/{unique}/analytics/+/+", f"e2e-results-{unique}")
    try:
        simulator = subprocess.run(
            [sys.executable, "-m", "edge_simulator", "--devices", str(DEVICES), "--rate", "5",
             "--count", str(TICKS), "--sensors", "temperature", "--device-prefix", f"e2e{unique}",
             "--topic-prefix", f"t/{unique}/", "--no-http", "--seed", "7"],
            cwd=REPO, env=pipeline["bridge"].env, capture_output=True, text=True, timeout=120)
        assert simulator.returncode == 0, simulator.stderr[-2000:]
        summary = json.loads(simulator.stdout.strip().splitlines()[-1])["summary"]
        expected = DEVICES * TICKS
        # As text: pytest shortens a dict in the report, and this once failed with
        # 6 of 10 sent after 1 s, the counts that would explain it cut off.
        assert summary["acked"] == expected, f"{summary}\n{simulator.stderr[-2000:]}"

        db = mongo[services.mongo_db]
        wait_for(lambda: db.readings.count_documents({}) == expected, 60,
                 f"{expected} readings in iot.readings "
                 f"(bridge log: {pipeline['bridge'].log_tail()})")
        wait_for(lambda: db.analytics.count_documents({}) == expected, 60,
                 f"{expected} results in iot.analytics "
                 f"(worker log: {pipeline['model_worker'].log_tail()})")
        wait_for(lambda: len(results.seen()) == expected, 30,
                 f"{expected} results over MQTT")

        stored_ids = {d["_id"] for d in db.readings.find({}, {"_id": 1})}
        assert {d["_id"] for d in db.analytics.find({}, {"_id": 1})} == stored_ids
        assert results.seen() == stored_ids
        assert results.topics == {f"t/{unique}/analytics/e2e{unique}-{i}/temperature"
                                  for i in range(DEVICES)}
        for result in results.messages:
            assert result["model"]["kind"] == "prophet"
            assert result["yhat_lower"] <= result["yhat"] <= result["yhat_upper"]
            assert result["anomaly"] == (not result["yhat_lower"] <= result["value"]
                                         <= result["yhat_upper"])

        api = pipeline["api"]
        status, body = api.get(f"/readings?device_id=e2e{unique}-0&sensor=temperature")
        assert status == 200, body
        assert len(body["items"]) == TICKS
        times = [item["ts"] for item in body["items"]]
        assert times == sorted(times)
        with urllib.request.urlopen(f"http://127.0.0.1:{api.http_port}/health", timeout=5) as r:
            assert r.status == 200
    finally:
        results.close()

    for name, proc in pipeline.items():
        assert proc.terminate() == 0, f"{name} did not exit cleanly:\n{proc.log_tail()}"
