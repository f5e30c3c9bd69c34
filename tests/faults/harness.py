"""What the fault scenarios share: the pipeline as real `python -m` processes
on one test's topics, database and MQTT root; simulated devices; outages of
the shared local services (always undone); and the checks that every
acknowledged reading is stored exactly once, scored exactly once, and that
windows and statistics equal a recomputation from the stored readings."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pymongo.database import Database

from contracts.clients import mqtt_client, mqtt_connect
from contracts.events import ns_to_iso
from contracts.settings import Settings
from tests.support import REPO, ServiceProcess, free_port, service_env, wait_for

STACK = REPO / "local_stack" / "stack.sh"
DEVICES, RATE_HZ, SENSOR = 2, 5.0, "temperature"
# A reading published once the pipeline is back must be scored within this.
RECOVERY_BOUND_S = 30.0
# Window and statistics values recomputed with math.fsum agree to this
# relative tolerance (both sides sum at most a few hundred values near 20).
REL_TOL = 1e-9
# A window closed by idle timeout during an outage is emitted again (a
# revision) once the readings held back arrive and its series goes idle
# again; the default 30 s would make every scenario wait that long.
IDLE_TIMEOUT_S = 5
# Windows and statistics must equal the recomputation within this.
SETTLE_S = 30.0


def stack(command: str, service: str, timeout: float = 150.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(STACK), command, service], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


def wait_healthy(service: str, timeout: float = 150.0) -> None:
    wait_for(lambda: stack("status-one", service, 30).returncode == 0, timeout,
             f"shared {service} healthy again")


@contextmanager
def service_stopped(service: str) -> Iterator[None]:
    """The shared `service` is stopped inside the block and always started
    again (and healthy) afterwards, whatever happens inside."""
    stopped = stack("stop-one", service)
    try:
        assert stopped.returncode == 0, stopped.stderr
        yield
    finally:
        started = stack("start-one", service)
        wait_healthy(service)
        assert started.returncode == 0, started.stderr


@dataclass
class Pipeline:
    """Bridges and workers of one test, each a subprocess that can be killed
    and started again with the same identity."""

    settings: Settings
    unique: str
    tmp_path: Path
    model_dir: Path
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(self.settings, self.unique, MODEL_PATH=str(self.model_dir),
                           BRIDGE_SESSION_EXPIRY_S="600", BRIDGE_SINK_BATCH_WAIT_MS="50",
                           WORKER_BATCH_WAIT_MS="50",
                           ANALYTICS_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S), **extra)

    def add_bridge(self, name: str, **extra: str) -> ServiceProcess:
        env = self.env(BRIDGE_CLIENT_ID=f"bridge-{self.unique}-{name}",
                       BRIDGE_INSTANCE=str(len(self.procs)),
                       BRIDGE_HTTP_PORT=str(free_port()), **extra)
        return self._add(name, ServiceProcess("bridge", env, self.tmp_path / f"{name}.log",
                                              http_port=int(env["BRIDGE_HTTP_PORT"])))

    def add_worker(self, name: str) -> ServiceProcess:
        env = self.env(WORKER_INSTANCE_ID=f"worker-{self.unique}-{name}",
                       WORKER_HTTP_PORT=str(free_port()))
        return self._add(name, ServiceProcess("model_worker", env, self.tmp_path / f"{name}.log",
                                              http_port=int(env["WORKER_HTTP_PORT"])))

    def _add(self, name: str, proc: ServiceProcess) -> ServiceProcess:
        self.procs[name] = proc
        proc.start()
        return proc

    def wait_ready(self, timeout: float = 120.0) -> None:
        for proc in self.procs.values():
            proc.wait_ready(timeout)

    def kill9_and_restart(self, name: str, down_s: float = 2.0) -> None:
        proc = self.procs[name]
        proc.kill()
        time.sleep(down_s)
        proc.start()
        proc.wait_ready(120)

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{p.log_tail(1500)}" for n, p in self.procs.items())

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.kill()


class ReadyClock:
    """Seconds from `start()` (the fault undone) until each process of the
    pipeline first answers /ready with 200, polled twice a second in the
    background (None for one that has not yet)."""

    def __init__(self, pipeline: Pipeline, limit_s: float = 180.0) -> None:
        self.pipeline, self.limit_s = pipeline, limit_s
        self.seconds: dict[str, float | None] = {}
        # The last not-ready answer of each process (status, body), for a failure's report.
        self.last_refusal: dict[str, tuple[int, Any]] = {}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ready-clock", daemon=True)

    def start(self) -> ReadyClock:
        self._started = time.monotonic()
        self.seconds = dict.fromkeys(self.pipeline.procs)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float | None]:
        """Called once the harness has seen every process ready: one the
        watcher has not yet seen ready counts as ready now."""
        self._stop.set()
        self._thread.join(5)
        for name, proc in self.pipeline.procs.items():
            if self.seconds.get(name) is None and self._ready(proc):
                self.seconds[name] = round(time.monotonic() - self._started, 2)
        return self.seconds

    def _ready(self, proc: ServiceProcess) -> bool:
        try:
            status, body = proc.get("/ready")
        except Exception as exc:  # e.g. a body that is not JSON mid-restart: not ready yet
            status, body = 0, repr(exc)
        if status != 200:
            self.last_refusal[proc.log_path.stem] = (status, body)
        return status == 200

    def _watch(self) -> None:
        while not self._stop.is_set() and time.monotonic() - self._started < self.limit_s:
            for name, proc in list(self.pipeline.procs.items()):
                if self.seconds.get(name) is None and self._ready(proc):
                    self.seconds[name] = round(time.monotonic() - self._started, 2)
            if all(v is not None for v in self.seconds.values()):
                return
            self._stop.wait(0.5)


class Devices:
    """`python -m edge_simulator` publishing `count` QoS 1 readings per
    device, in the background; spikes and dropouts off, so device d sends
    exactly seq 0..count-1."""

    def __init__(self, pipeline: Pipeline, count: int, prefix: str) -> None:
        self.count = count
        self.prefix = prefix
        self.out = pipeline.tmp_path / f"{prefix}.out"
        self.err = pipeline.tmp_path / f"{prefix}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_simulator", "--devices", str(DEVICES),
                 "--rate", str(RATE_HZ), "--count", str(count), "--sensors", SENSOR,
                 "--device-prefix", prefix, "--topic-prefix", f"t/{pipeline.unique}/",
                 "--spike-rate", "0", "--dropout-rate", "0", "--jitter", "0", "--seed", "11",
                 "--drain-timeout", "90", "--progress-interval", "5", "--no-http"],
                cwd=REPO, env=pipeline.env(), stdout=out, stderr=err)

    def finish(self, timeout: float = 240.0) -> dict[str, Any]:
        """Waits for the simulator's exit; its summary, which must show every
        reading acknowledged by the broker and none dropped."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        err = self.err.read_text(errors="replace")[-2000:]
        assert code == 0, err
        summary: dict[str, Any] = orjson.loads(
            self.out.read_text().strip().splitlines()[-1])["summary"]
        assert summary["dropped"] == 0, summary
        assert summary["acked"] == DEVICES * self.count, (summary, err)
        return summary

    def expected(self) -> set[tuple[str, int]]:
        return {(f"{self.prefix}-{d}", seq) for d in range(DEVICES) for seq in range(self.count)}


def probe_latency(settings: Settings, db: Database[dict[str, Any]], unique: str,
                  bound_s: float = RECOVERY_BOUND_S) -> float:
    """Seconds from the PUBACK of one new reading to its result in iot.analytics."""
    device = f"probe{unique}"
    client = mqtt_client(settings, f"probe-{unique}")
    mqtt_connect(client, settings)
    client.loop_start()
    try:
        body = {"ts": ns_to_iso(time.time_ns()), "value": 21.5, "seq": 0}
        info = client.publish(f"t/{unique}/sensors/{device}/{SENSOR}", json.dumps(body), qos=1)
        info.wait_for_publish(15)
        acked_at = time.monotonic()
        try:
            wait_for(lambda: db.analytics.find_one({"device_id": device}), bound_s,
                     f"the probe reading scored within {bound_s} s")
        except AssertionError as exc:
            stored = db.readings.find_one({"device_id": device}) is not None
            raise AssertionError(f"{exc} (in iot.readings: {stored})") from exc
        return round(time.monotonic() - acked_at, 2)
    finally:
        client.disconnect()
        client.loop_stop()


def check_delivery(db: Database[dict[str, Any]], devices: Devices,
                   timeout: float = 120.0) -> dict[str, int]:
    """Every acknowledged reading in iot.readings once and in iot.analytics
    once; returns the figures (published, acked, stored, duplicated, lost)."""
    expected = devices.expected()
    query = {"device_id": {"$regex": f"^{devices.prefix}-"}}

    def stored_keys() -> Counter[tuple[str, int]]:
        return Counter((d["device_id"], d["seq"])
                       for d in db.readings.find(query, {"device_id": 1, "seq": 1}))

    try:
        wait_for(lambda: expected <= set(stored_keys()), timeout, "every acked reading stored")
    except AssertionError as exc:
        missing = sorted(expected - set(stored_keys()))
        raise AssertionError(f"{exc}: {len(missing)} missing, e.g. {missing[:20]}") from exc
    reading_ids = [d["_id"] for d in db.readings.find(query, {"_id": 1})]
    wait_for(lambda: db.analytics.count_documents(query) >= len(reading_ids), timeout,
             "every stored reading scored")
    keys = stored_keys()
    analytics_ids = [d["_id"] for d in db.analytics.find(query, {"_id": 1})]
    duplicated = sum(n - 1 for n in keys.values())
    assert duplicated == 0, [k for k, n in keys.items() if n > 1][:5]
    assert set(keys) == expected, f"unexpected readings: {sorted(set(keys) - expected)[:5]}"
    assert len(analytics_ids) == len(set(analytics_ids)) == len(reading_ids)
    assert set(analytics_ids) == set(reading_ids)
    return {"published": len(expected), "acked": len(expected), "stored": len(keys),
            "scored": len(analytics_ids), "duplicated": duplicated,
            "lost": len(expected - set(keys))}


def _close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=REL_TOL, abs_tol=REL_TOL)


def window_mismatches(db: Database[dict[str, Any]], prefix: str) -> tuple[list[str], int, int]:
    """Differences between the stored windows and statistics and a
    recomputation (math.fsum) from the stored readings; and how many windows
    and series were compared."""
    query = {"device_id": {"$regex": f"^{prefix}-"}}
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for doc in db.readings.find(query, {"device_id": 1, "sensor": 1, "ts_ns": 1, "value": 1}):
        series[(doc["device_id"], doc["sensor"])].append((doc["ts_ns"], doc["value"]))
    wrong: list[str] = []
    windows = list(db.windows.find({**query, "field": "value"}))
    for window in windows:
        end_ns = window["start_ns"] + window["size_s"] * 1_000_000_000
        values = [v for ts, v in series[(window["device_id"], window["sensor"])]
                  if window["start_ns"] <= ts < end_ns]
        label = (f"window {window['_id']} rev {window.get('revision')} "
                 f"closed by {window.get('closed_by')}")
        if window["count"] != len(values):
            wrong.append(f"{label}: count {window['count']}, recomputed {len(values)}")
        elif not (_close(window["sum"], math.fsum(values))
                  and _close(window["mean"], math.fsum(values) / len(values))
                  and window["min"] == min(values) and window["max"] == max(values)):
            wrong.append(f"{label}: sum/mean/min/max differ")
    if not windows:
        wrong.append("no closed window to compare")
    stats = {(d["device_id"], d["sensor"]): d for d in db.stats.find({**query, "field": "value"})}
    if set(stats) != set(series):
        wrong.append(f"statistics for {sorted(stats)}, readings for {sorted(series)}")
    for key, points in series.items():
        numbers = [v for _, v in points]
        mean = math.fsum(numbers) / len(numbers)
        m2 = math.fsum((x - mean) ** 2 for x in numbers)
        found = stats.get(key)
        if found is None:
            continue
        if found["count"] != len(numbers):
            wrong.append(f"stats {key}: count {found['count']}, recomputed {len(numbers)}")
        elif not (_close(found["mean"], mean)
                  and math.isclose(found["m2"], m2, rel_tol=1e-6, abs_tol=1e-9)):
            wrong.append(f"stats {key}: mean/m2 differ")
    return wrong, len(windows), len(series)


def check_windows_and_stats(db: Database[dict[str, Any]], prefix: str) -> dict[str, int]:
    """Windows and statistics equal the recomputation within SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        wrong, windows, series = window_mismatches(db, prefix)
        if not wrong:
            return {"windows_checked": windows, "series_checked": series}
        if time.monotonic() > deadline:
            raise AssertionError(f"after {SETTLE_S} s: " + "; ".join(wrong[:10]))
        time.sleep(1)
