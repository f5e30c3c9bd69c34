"""One case of the end-to-end benchmark: the pipeline's processes and the
simulators on the case's own MQTT root, Kafka topics, consumer groups and
database, and the figures taken from them (latency, lag, resources, drain)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.bench_bridge import PARTITIONS, Phase
from bench.common import (
    ResultsSubscriber,
    clear_retained,
    listening_pids,
    percentiles,
)
from contracts.clients import delete_topics, mongo_client
from contracts.events import datetime_to_ns, ns_to_datetime
from contracts.settings import Settings
from tests.support import REPO, ServiceProcess, free_port

DEVICES_PER_SIMULATOR = 4000


class Case:
    """One N: names, service processes and the simulator, all on this case's
    own MQTT root, topics, consumer groups and database."""

    def __init__(self, settings: Settings, run_id: str, name: str, tmp: Path,
                 analytics: bool = False) -> None:
        self.settings = settings
        self.phase = Phase(settings, run_id, name)
        self.name, self.tmp = name, tmp
        root = self.phase.root
        self.analytics_topic = f"bench.{run_id}.{name}.analytics"
        self.windows_topic = f"bench.{run_id}.{name}.windows"
        self.worker_group = f"bench-worker-{run_id}-{name}"
        self.results_filter = f"{root}analytics/+/+"
        self.procs: dict[str, ServiceProcess] = {}
        self.analytics = analytics
        self.env = {**os.environ, **self.phase.env, "LOG_FORMAT": "json",
                    "KAFKA_PARTITIONS": str(PARTITIONS),
                    "KAFKA_TOPIC_ANALYTICS": self.analytics_topic,
                    "KAFKA_TOPIC_WINDOWS": self.windows_topic,
                    "WORKER_GROUP": self.worker_group,
                    "MQTT_RESULTS_TOPIC": f"{root}analytics/{{device_id}}/{{sensor}}",
                    "ANALYTICS_MQTT_WINDOW_TOPIC": f"{root}analytics/{{device_id}}/{{sensor}}/w",
                    "ANALYTICS_MQTT_STATS_TOPIC": f"{root}analytics/{{device_id}}/{{sensor}}/s"}

    def start_pipeline(self, model_dir: Path, forwarders: int, workers: int) -> None:
        def add(name: str, module: str, port_var: str, args: tuple[str, ...] = (),
                **extra: str) -> None:
            port = free_port()
            env = {**self.env, port_var: str(port), **extra}
            self.procs[name] = ServiceProcess(module, env, self.tmp / f"{self.name}-{name}.log",
                                              args=args, http_port=port).start()

        group = self.phase.env["BRIDGE_SHARE_GROUP"]
        for i in range(forwarders):
            add(f"forwarder{i}", "bridge", "BRIDGE_HTTP_PORT", ("forward",),
                BRIDGE_CLIENT_ID=f"{group}-{i}", BRIDGE_INSTANCE=str(i))
        add("sink", "bridge", "BRIDGE_HTTP_PORT", ("sink",))
        for i in range(workers):
            add(f"worker{i}", "model_worker", "WORKER_HTTP_PORT", MODEL_PATH=str(model_dir),
                WORKER_INSTANCE_ID=f"{self.worker_group}-{i}",
                ANALYTICS_ENABLED=str(self.analytics).lower())
        add("api", "api", "API_PORT")
        for name, proc in self.procs.items():
            proc.wait_ready(180, path="/health" if name == "api" else "/ready")

    def start_simulators(self, devices: int, rate: float) -> list[tuple[subprocess.Popen[bytes],
                                                                         int, int]]:
        sims = []
        for i, start in enumerate(range(0, devices, DEVICES_PER_SIMULATOR)):
            count = min(DEVICES_PER_SIMULATOR, devices - start)
            port = free_port()
            cmd = [sys.executable, "-m", "edge_simulator", "--devices", str(count),
                   "--rate", str(rate), "--sensors", "temperature", "--spike-rate", "0",
                   "--dropout-rate", "0", "--seed", "1", "--topic-prefix", self.phase.root,
                   "--device-prefix", f"{self.name}s{i}", "--http-port", str(port),
                   "--drain-timeout", "20"]
            env = {**os.environ, "LOG_LEVEL": "WARNING"}
            sims.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL), port, count))
        return sims

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.terminate(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        return codes

    def cleanup(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        clear_retained(self.settings, f"{self.phase.root}#")
        self.phase.cleanup()
        delete_topics(self.settings, [self.analytics_topic, self.windows_topic])


def stop_simulators(sims: list[tuple[subprocess.Popen[bytes], int, int]]) -> int:
    """SIGTERM, let each drain, and sum the acked counts of their summaries."""
    acked = 0
    for proc, _, _ in sims:
        proc.send_signal(signal.SIGTERM)
    for proc, _, _ in sims:
        out, _ = proc.communicate(timeout=90)
        acked += int(orjson.loads(out.decode().strip().splitlines()[-1])["summary"]["acked"])
    return acked


def service_pids(settings: Settings, procs: dict[str, Any]) -> dict[str, int]:
    mongo_port = int(settings.mongo_url.get_secret_value().rsplit(":", 1)[1].split("/")[0])
    kafka_port = int(settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
    return {**listening_pids({"mosquitto": settings.mqtt_port, "kafka": kafka_port,
                              "mongo": mongo_port}), **procs}


def window_figures(results: ResultsSubscriber, steady_ns: tuple[int, int],
                   load_s: float) -> dict[str, Any]:
    """Results that arrived over MQTT during the steady window."""
    inside = [a for a in results.snapshot() if steady_ns[0] <= a.arrived_ns <= steady_ns[1]]
    return {"sustained_per_s": round(len(inside) / load_s, 1),
            "mqtt_latency_ms": percentiles([a.latency_ms for a in inside])}


def mongo_latency(settings: Settings, db: str, steady_ns: tuple[int, int]) -> dict[str, Any]:
    query = {"scored_at": {"$gte": ns_to_datetime(steady_ns[0]),
                           "$lte": ns_to_datetime(steady_ns[1])}}
    with mongo_client(settings) as client:
        docs = client[db]["analytics"].find(query, {"ts_ns": 1, "scored_at": 1})
        delays = [(datetime_to_ns(d["scored_at"]) - int(d["ts_ns"])) / 1e6 for d in docs]
    return percentiles(delays)


def drain(settings: Settings, case: Case, results: ResultsSubscriber, acked: int,
          timeout_s: float) -> float | None:
    """Seconds until every acked reading is stored, scored and published; None
    if that did not happen within `timeout_s`."""
    started = time.monotonic()
    with mongo_client(settings) as client:
        db = client[case.phase.db]
        while time.monotonic() - started < timeout_s:
            if (results.distinct_ids() >= acked
                    and db["analytics"].estimated_document_count() >= acked
                    and db["readings"].estimated_document_count() >= acked):
                return round(time.monotonic() - started, 1)
            time.sleep(0.5)
    return None


def lag_at(series: list[tuple[float, int]], moment_s: float) -> int | None:
    before = [lag for at, lag in series if at <= moment_s]
    return before[-1] if before else None
