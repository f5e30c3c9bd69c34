"""Fault scenarios on the real services: while simulated devices publish a
known set of QoS 1 readings, a bridge or worker is killed with SIGKILL,
Kafka or the MongoDB-wire server is stopped for 30 s, or Mosquitto is
restarted. Afterwards every reading the broker acknowledged is in
iot.readings and iot.analytics exactly once, windows and statistics equal a
recomputation, and a reading published after recovery is scored within
RECOVERY_BOUND_S. Each scenario's figures go to the pytest cache under
`edgepipe/faults/<scenario>` (`pytest --cache-show 'edgepipe/faults/*'`)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from contracts.settings import Settings
from tests.faults.harness import (
    DEVICES,
    RATE_HZ,
    RECOVERY_BOUND_S,
    Devices,
    Pipeline,
    ReadyClock,
    check_delivery,
    check_windows_and_stats,
    probe_latency,
    service_stopped,
)
from tests.support import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

OUTAGE_S = 30.0
# librdkafka's default session.timeout.ms (45 s) plus margin.
SURVIVOR_BOUND_S = 60.0
# How long the killed bridge of scenario (f) stays dead before its restart.
RESTART_DELAY_S = 10.0
# Readings flow this long before the fault, so it lands mid-stream.
LEAD_IN_S = 3.0
# The raw sink's session in (c'): well inside the outage.
SHORT_SESSION_MS = 10_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    made = subprocess.run([sys.executable, "-m", "model_worker", "make-demo-model",
                           "--out", str(models / "default.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert made.returncode == 0, made.stderr
    return models


@pytest.fixture
def pipeline(services: Settings, unique: str, tmp_path: Path,
             model_dir: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(services, unique, tmp_path, model_dir)
    try:
        yield pipe
    finally:
        pipe.stop_all()


def run_scenario(request: pytest.FixtureRequest, pipeline: Pipeline,
                 mongo: MongoClient[dict[str, Any]], name: str, ticks: int,
                 fault: Callable[[], None], *, bound_s: float = RECOVERY_BOUND_S,
                 delivery_timeout_s: float = 120.0) -> dict[str, Any]:
    """Devices publish `ticks` readings each; `fault` runs LEAD_IN_S after
    they start; then the recovery probe (scored within `bound_s`) and the
    delivery and analytics checks."""
    pipeline.wait_ready()
    db = mongo[pipeline.settings.mongo_db]
    started = time.monotonic()
    devices = Devices(pipeline, ticks, f"f{name}{pipeline.unique[:6]}")
    ready_clock = ReadyClock(pipeline)
    try:
        time.sleep(LEAD_IN_S)
        fault()
        ready_clock.start()
        summary = devices.finish()
    finally:
        if devices.proc.poll() is None:
            devices.proc.kill()
    try:
        for proc in pipeline.procs.values():
            if proc.proc is not None and proc.proc.poll() is None:
                proc.wait_ready(60)
    except AssertionError as exc:  # say why: one CI failure gave only a log tail
        raise AssertionError(
            f"{exc}\nlast not-ready answers: {ready_clock.last_refusal}") from exc
    # Time from the fault's end (the service back and healthy) to each /ready.
    ready_after_s = ready_clock.stop()
    try:
        recovery_s = probe_latency(pipeline.settings, db, pipeline.unique, bound_s)
        figures: dict[str, Any] = {**check_delivery(db, devices, delivery_timeout_s)}
        figures |= check_windows_and_stats(db, devices.prefix)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pipeline.logs()}") from exc
    figures |= {"devices": DEVICES, "rate_hz": RATE_HZ, "reconnects": summary["reconnects"],
                "probe_scored_after_s": recovery_s, "ready_after_s": ready_after_s,
                "scenario_s": round(time.monotonic() - started, 1)}
    print(f"fault scenario {name}: {figures}")
    print(f"fault scenario {name} last not-ready answers: {ready_clock.last_refusal}")
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        cache.set(f"edgepipe/faults/{name}", figures)
    return figures


def test_bridge_killed_and_restarted(request: pytest.FixtureRequest, pipeline: Pipeline,
                                     mongo: MongoClient[dict[str, Any]]) -> None:
    pipeline.add_bridge("bridge")
    pipeline.add_worker("worker")
    run_scenario(request, pipeline, mongo, "a_kill_bridge", 60,
                 lambda: pipeline.kill9_and_restart("bridge"))


def test_worker_killed_and_restarted(request: pytest.FixtureRequest, pipeline: Pipeline,
                                     mongo: MongoClient[dict[str, Any]]) -> None:
    pipeline.add_bridge("bridge")
    pipeline.add_worker("worker")
    run_scenario(request, pipeline, mongo, "b_kill_worker", 60,
                 lambda: pipeline.kill9_and_restart("worker"))


def _outage(service: str) -> Callable[[], None]:
    def fault() -> None:
        with service_stopped(service):
            time.sleep(OUTAGE_S)
    return fault


@pytest.mark.timeout(360)
def test_kafka_down_for_30_s(request: pytest.FixtureRequest, pipeline: Pipeline,
                             mongo: MongoClient[dict[str, Any]]) -> None:
    """Kafka is away about 50 s here (stop, 30 s, start and load), so the raw
    sink's 45 s session often expires too; (c') makes sure it does. It was an
    expected failure until every Kafka client stopped re-bootstrapping
    (contracts.clients.RECOVERY; test_kafka_restart_clients): librdkafka's
    default decommissioned the single broker's handle during the outage, and a
    coordinator left tied to it hung the worker's send_offsets_to_transaction
    after Kafka's return (presumably also the analytics load's committed(),
    which asks the same group coordinator; not seen in our runs)."""
    pipeline.add_bridge("bridge")
    pipeline.add_worker("worker")
    run_scenario(request, pipeline, mongo, "c_kafka_down", 200, _outage("kafka"))
    log = pipeline.procs["bridge"].log_path.read_text(errors="replace")
    assert "sink offset gap" not in log


@pytest.mark.timeout(360)
def test_kafka_down_past_the_sink_session(request: pytest.FixtureRequest, pipeline: Pipeline,
                                          mongo: MongoClient[dict[str, Any]]) -> None:
    """(c'): as (c), with the raw sink's session (10 s) far shorter than the
    outage, so its partitions are always lost and assigned again once Kafka
    is back, which (c) does only when Kafka stays away longer than 45 s. No
    record may be skipped on the way. (Its writes are done by the time the
    session expires, nothing arrives meanwhile; the loss with writes in
    flight is test_raw_sink_rebalance's.)"""
    pipeline.add_bridge("bridge", BRIDGE_SINK_SESSION_TIMEOUT_MS=str(SHORT_SESSION_MS))
    pipeline.add_worker("worker")
    run_scenario(request, pipeline, mongo, "c2_kafka_down_sink_session_lost", 200,
                 _outage("kafka"))
    log = pipeline.procs["bridge"].log_path.read_text(errors="replace")
    # Lost, or its consumer replaced after a commit hung with the session expired.
    assert "sink partitions lost" in log or "kafka commit hung" in log, \
        "the sink's session did not expire"
    assert "sink offset gap" not in log


@pytest.mark.timeout(360)
def test_mongo_down_for_30_s(request: pytest.FixtureRequest, pipeline: Pipeline,
                             mongo: MongoClient[dict[str, Any]]) -> None:
    pipeline.add_bridge("bridge")
    pipeline.add_worker("worker")
    run_scenario(request, pipeline, mongo, "d_mongo_down", 200, _outage("mongo"))


def test_mosquitto_restarted(request: pytest.FixtureRequest, pipeline: Pipeline,
                             mongo: MongoClient[dict[str, Any]]) -> None:
    """A lone bridge with a plain subscription (BRIDGE_SHARED_SUBSCRIPTION=false):
    Mosquitto 2.0 restores an offline session's plain subscriptions after a
    restart but not its shared ones, so with a shared subscription whatever
    devices publish between the broker's restart and the bridge's
    resubscribe is acknowledged and dropped (70 of 120 readings in one run;
    see test_mosquitto_restart_with_shared_subscription)."""
    pipeline.add_bridge("bridge")  # plain subscription, the default
    pipeline.add_worker("worker")

    def restart() -> None:
        with service_stopped("mosquitto"):
            time.sleep(2)

    run_scenario(request, pipeline, mongo, "e_restart_mosquitto", 60, restart)


def test_mosquitto_restart_with_two_split_bridges(request: pytest.FixtureRequest,
                                                  pipeline: Pipeline,
                                                  mongo: MongoClient[dict[str, Any]]) -> None:
    """Two bridges sharing the load without a shared subscription
    (BRIDGE_SPLIT_COUNT=2): each subscribes plainly, which Mosquitto restores
    with the session after a restart, and forwards only its devices. Nothing
    is lost, unlike test_mosquitto_restart_with_shared_subscription."""
    for name in ("bridge-a", "bridge-b"):  # BRIDGE_INSTANCE 0 and 1
        pipeline.add_bridge(name, BRIDGE_SPLIT_COUNT="2")
    pipeline.add_worker("worker")

    def restart() -> None:
        with service_stopped("mosquitto"):
            time.sleep(2)

    figures = run_scenario(request, pipeline, mongo, "e_restart_mosquitto_split", 60, restart)
    skipped = []
    for name in ("bridge-a", "bridge-b"):
        _, body = pipeline.procs[name].get("/ready")
        skipped.append(body["forwarder"]["split"]["not_ours"])
    # Each bridge saw every message and left the other's share alone.
    assert sum(skipped) >= figures["published"], skipped


def test_two_of_each_and_one_of_each_killed(request: pytest.FixtureRequest, pipeline: Pipeline,
                                            mongo: MongoClient[dict[str, Any]]) -> None:
    """The surviving worker takes over the dead one's Kafka partitions once
    its group session expires (librdkafka's session.timeout.ms, 45 s), hence
    the longer bound. Mosquitto keeps sending a share of the shared
    subscription's messages to the dead bridge's persistent session, where
    they wait until a bridge with its client id returns; so the dead bridge
    is started again after RESTART_DELAY_S, as a supervisor would."""
    for name in ("bridge-a", "bridge-b"):
        pipeline.add_bridge(name, BRIDGE_SHARED_SUBSCRIPTION="true")
    for name in ("worker-a", "worker-b"):
        pipeline.add_worker(name)

    def kill_one_of_each() -> None:
        pipeline.procs.pop("worker-b").kill()
        pipeline.kill9_and_restart("bridge-b", down_s=RESTART_DELAY_S)

    run_scenario(request, pipeline, mongo, "f_two_of_each_kill_one", 60, kill_one_of_each,
                 bound_s=SURVIVOR_BOUND_S)


@pytest.mark.xfail(reason=(
    "Mosquitto 2.0 does not restore an offline session's shared subscription after a "
    "restart: readings published before the bridge resubscribes are acknowledged to "
    "devices and dropped"), strict=False)
def test_mosquitto_restart_with_shared_subscription(
        request: pytest.FixtureRequest, pipeline: Pipeline,
        mongo: MongoClient[dict[str, Any]]) -> None:
    pipeline.add_bridge("bridge", BRIDGE_SHARED_SUBSCRIPTION="true")
    pipeline.add_worker("worker")

    def restart() -> None:
        with service_stopped("mosquitto"):
            time.sleep(2)

    # The loss is certain once it happened: no need to wait the full two minutes.
    run_scenario(request, pipeline, mongo, "e_restart_mosquitto_shared", 60, restart,
                 delivery_timeout_s=30)
