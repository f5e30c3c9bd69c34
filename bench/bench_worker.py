"""Model worker benchmark: `python -m bench.bench_worker [--quick]`.

1. Scoring step alone, Prophet with intervals: events/s of the worker's
   scoring (`score_batch`, batches of WORKER_BATCH_SIZE) vs the seed's way,
   one `model.predict` per event (a sample of calls timed and extrapolated).
2. The whole worker through the real services: N readings pre-loaded into a
   bench topic, a `python -m model_worker` subprocess started, timed until its
   consumer group has committed them all, then stopped with SIGTERM (its
   shutdown writes the last analytics checkpoint); its peak RSS and the CPU
   time of it and of each service from its first commit to its exit.
   Scoring only vs with stream analytics, over >= 3 interleaved rounds and
   three streams (`worker_rounds`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import psutil
from confluent_kafka import TopicPartition

from bench.worker_rounds import BARE, JUDGED_ON, PACED_EVENTS, STREAMS, report, run_rounds
from contracts.clients import (
    delete_topics,
    ensure_topics,
    kafka_consumer,
    kafka_producer,
    mongo_client,
)
from contracts.events import Reading, make_event_id
from contracts.settings import get_settings
from model_worker.models import load_model
from model_worker.scoring import score_batch
from model_worker.train import demo_frame, fit_prophet, save_model

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "bench_worker.json"


def make_readings(count: int, devices: int = 50, period_s: float = 5.0,
                  live: bool = False) -> list[Reading]:
    """Round robin over `devices`, each sending one reading every `period_s` of
    event time (the default: 2 readings per 10 s window, 0.58 windows closed per
    reading over the three default sizes, a window-heavy stream). Event times
    end now, or with `live` start in a second (to be sent as they fall due)."""
    step = round(period_s * 1e9 / devices)
    start = time.time_ns() + 10**9 if live else time.time_ns() - count * step
    out = []
    for i in range(count):
        device, ts_ns = f"bench-{i % devices}", start + i * step
        out.append(Reading(make_event_id(device, "temperature", ts_ns), device, "temperature",
                           ts_ns, value=21.0 + (i % 11) * 0.2))
    return out


def predict_one(model: Any, ts_ns: int) -> pd.DataFrame:
    """The seed pipeline's scoring: one Prophet `predict`, with its sampled interval, per event."""
    return model.predict(pd.DataFrame({"ds": [pd.Timestamp(ts_ns, unit="ns")]}))


def bench_scoring(model_path: Path, events: int, per_event_sample: int,
                  batch_size: int) -> dict[str, Any]:
    loaded = load_model(model_path, trust_pickle=False, grid_step_s=3600, now_ns=time.time_ns())
    readings = make_readings(events)
    score_batch(readings[:batch_size], lambda s: loaded, {}, time.time_ns())  # warm the grid
    started = time.perf_counter()
    for i in range(0, events, batch_size):
        score_batch(readings[i:i + batch_size], lambda s: loaded, {}, time.time_ns())
    batched_s = time.perf_counter() - started

    model = loaded.forecaster.model  # type: ignore[attr-defined]
    sample = readings[:per_event_sample]
    started = time.perf_counter()
    for reading in sample:
        predict_one(model, reading.ts_ns)
    per_event_s = (time.perf_counter() - started) / len(sample)
    batched_rate = events / batched_s
    return {"events": events, "batch_size": batch_size,
            "scoring_events_per_s": round(batched_rate),
            "per_event_sample": len(sample), "per_event_ms": round(per_event_s * 1000, 2),
            "per_event_events_per_s": round(1 / per_event_s, 1),
            "ratio": round(batched_rate * per_event_s)}


def committed(settings: Any, group: str, topic: str, partitions: int) -> int:
    consumer = kafka_consumer(settings, group)
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                     timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def service_processes() -> dict[str, psutil.Process]:
    """The local stack's Kafka, MongoDB-wire server and Mosquitto (their CPU time
    is part of what the worker's writes cost)."""
    found = {}
    for name in ("kafka", "mongo", "mosquitto"):
        try:
            found[name] = psutil.Process(int((REPO / ".stack" / "run" / f"{name}.pid").read_text()))
        except (OSError, ValueError, psutil.Error):
            continue
    return found


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, process in processes.items():
        try:
            times = process.cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = 0.0
    return out


def stop_and_reap(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """SIGTERM `proc`, wait for its exit and return its CPU seconds as the kernel
    accounted them at exit (psutil cannot read a process that is gone)."""
    proc.terminate()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise SystemExit(f"worker exited with {proc.returncode} on SIGTERM")
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.02)
    raise SystemExit(f"worker still running {timeout_s:.0f} s after SIGTERM")


def analytics_covered(settings: Any, db_name: str) -> int:
    """Readings that both the analytics state documents and `iot.stats` cover
    (statistics are written less often than states)."""
    with mongo_client(settings) as client:
        db = client[db_name]
        state = sum(int(d["applied_offset"]) + 1
                    for d in db["analytics_state"].find({}, {"applied_offset": 1}))
        stats = sum(int(d["count"]) for d in db["stats"].find({}, {"count": 1}))
        return min(state, stats)


def produce_all(producer: Any, topic: str, readings: list[Reading], step_ns: int = 0) -> None:
    """With `step_ns`, paced: each reading sent when the wall clock reaches its
    event time (`make_readings` with `live`), as devices would send them."""
    for reading in readings:
        if step_ns:
            ahead = (reading.ts_ns - time.time_ns()) / 1e9
            if ahead > 0:
                producer.poll(0)
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, reading.to_json(), reading.device_id.encode())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)


def bench_worker(model_dir: Path, events: int, timeout_s: float, analytics: bool,
                 repo: Path = REPO, devices: int = 50, period_s: float = 5.0,
                 paced: bool = False) -> dict[str, Any]:
    """`repo` is the checkout whose worker runs (another one: a baseline to compare).
    Pre-loaded, the worker runs flat out; `paced`: the readings are sent at the
    stream's own rate while the worker runs, so costs that come per second
    (checkpoints) weigh per reading as in operation."""
    settings = get_settings()
    tag = uuid.uuid4().hex[:8]
    topics = {"KAFKA_TOPIC_READINGS": f"bench.{tag}.readings",
              "KAFKA_TOPIC_DLQ": f"bench.{tag}.readings.dlq",
              "KAFKA_TOPIC_ANALYTICS": f"bench.{tag}.analytics",
              "KAFKA_TOPIC_WINDOWS": f"bench.{tag}.readings.windows"}
    ensure_topics(settings, list(topics.values()))
    producer = kafka_producer(settings, **{"linger.ms": 5 if paced else 50,
                                           "batch.num.messages": 10_000})
    if not paced:
        produce_all(producer, topics["KAFKA_TOPIC_READINGS"],
                    make_readings(events, devices, period_s))
    group = f"bench-worker-{tag}"
    env = {**os.environ, **topics, "MODEL_PATH": str(model_dir), "WORKER_GROUP": group,
           "MONGO_DB": f"bench_{tag}", "WORKER_HTTP_PORT": "0", "LOG_LEVEL": "WARNING",
           "MQTT_RESULTS_TOPIC": f"bench/{tag}/analytics/{{device_id}}/{{sensor}}",
           "ANALYTICS_ENABLED": str(analytics).lower(),
           "ANALYTICS_MQTT_WINDOW_TOPIC": f"bench/{tag}/analytics/{{device_id}}/{{sensor}}/window",
           "ANALYTICS_MQTT_STATS_TOPIC": f"bench/{tag}/analytics/{{device_id}}/{{sensor}}/stats"}
    proc = subprocess.Popen([sys.executable, "-m", "model_worker"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_rss = 0
    started = time.monotonic()
    done = first = 0
    first_at = started
    # CPU seconds of the worker and of the services over the timed span: on a
    # shared machine a steadier measure of per-event cost than the wall clock.
    processes = {"worker": psutil.Process(proc.pid), **service_processes()}
    cpu_first = cpu_seconds(processes)
    sender = threading.Thread(target=produce_all, daemon=True, args=(
        producer, topics["KAFKA_TOPIC_READINGS"],
        make_readings(events, devices, period_s, live=True), round(period_s * 1e9 / devices)))
    if paced:
        sender.start()
    try:
        while time.monotonic() - started < timeout_s and done < events:
            peak_rss = max(peak_rss, processes["worker"].memory_info().rss)
            done = committed(settings, group, topics["KAFKA_TOPIC_READINGS"],
                             settings.kafka_partitions)
            if done and not first:  # start the clock at the first commit: excludes imports
                first, first_at = done, time.monotonic()
                cpu_first = cpu_seconds(processes)
            time.sleep(0.25)
        elapsed = time.monotonic() - first_at
        # Analytics checkpoints lag the loop's commits (statistics by up to
        # ANALYTICS_STATS_INTERVAL_S); the worker's shutdown writes them all, so the
        # span ends at its exit, with every reading durable. (Polling iot.stats
        # meanwhile would charge the polls' server CPU to analytics.)
        worker_cpu = stop_and_reap(proc, timeout_s=60)
        durable = time.monotonic() - first_at
        cpu_used = {k: v - cpu_first[k] for k, v in cpu_seconds(processes).items()
                    if k != "worker"}
        cpu_used["worker"] = worker_cpu - cpu_first["worker"]
        covered = analytics_covered(settings, f"bench_{tag}") if analytics else events
    finally:
        if proc.returncode is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=30)
        log_tail = stderr[-2000:].decode(errors="replace")
        if paced:
            sender.join(timeout=60)
        delete_topics(settings, list(topics.values()))
        with mongo_client(settings) as client:
            client.drop_database(f"bench_{tag}")
    if done < events:
        raise SystemExit(f"worker committed {done}/{events} in {timeout_s}s:\n{log_tail}")
    if covered < events:
        raise SystemExit(f"after the worker's exit, its analytics state and iot.stats cover "
                         f"{covered}/{events} readings:\n{log_tail}")
    return {"events": events, "devices": devices, "device_period_s": period_s, "paced": paced,
            "committed_after_s": round(elapsed, 2),
            "analytics_durable_after_s": round(durable, 2) if analytics else None,
            # Until the worker exited after SIGTERM, every output and checkpoint written.
            "durable_events_per_s": round((done - first) / durable) if durable else None,
            "repo": str(repo),
            "worker_events_per_s": round((done - first) / elapsed) if elapsed else None,
            "worker_peak_rss_mb": round(peak_rss / 2**20, 1),
            "cpu_us_per_event": {k: round(1e6 * v / (done - first), 1)
                                 for k, v in cpu_used.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--worker-only", action="store_true", help="skip the scoring step")
    parser.add_argument("--events", type=int, help="readings per whole-worker run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the with/without-analytics comparison")
    parser.add_argument("--streams", default=",".join(STREAMS),
                        help=f"comma-separated, of {sorted(STREAMS)}")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout (e.g. a git worktree of main) whose worker "
                             "with analytics runs beside this one's, in the same rounds")
    args = parser.parse_args()
    scoring_events, sample, worker_events = (20_000, 30, 10_000) if args.quick else (
        200_000, 200, 40_000)
    worker_events = args.events or worker_events
    streams = [STREAMS[name] for name in args.streams.split(",")]
    scoring = None
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        model, _ = fit_prophet(demo_frame())
        save_model(model, model_dir / "default.json", "json")
        if not args.worker_only:
            scoring = bench_scoring(model_dir / "default.json", scoring_events, sample,
                                    get_settings().worker_batch_size)
            print(f"scoring step, Prophet with intervals: {scoring['scoring_events_per_s']:,} "
                  f"events/s (batches of {scoring['batch_size']})")
            print(f"seed way, one predict per event: {scoring['per_event_ms']} ms/event = "
                  f"{scoring['per_event_events_per_s']} events/s (timed on "
                  f"{scoring['per_event_sample']} events, extrapolated)")
            print(f"ratio: {scoring['ratio']:,}x")
        # Scoring only, then scoring plus windows and running statistics, in the same
        # round: the difference is what stream analytics adds to the worker's
        # per-event cost.
        variants: list[tuple[str, bool, Path]] = [(BARE, False, REPO)]
        if args.baseline:
            variants.append(("with analytics, baseline", True, args.baseline.resolve()))
        variants.append(("with analytics", True, REPO))

        def run(*, paced: bool, **kwargs: Any) -> dict[str, Any]:
            paced_events = worker_events // 4 if args.quick else PACED_EVENTS
            events = paced_events if paced else worker_events
            return bench_worker(model_dir, events, timeout_s=170, paced=paced, **kwargs)

        results = run_rounds(run, variants, streams, args.rounds)
    report(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(orjson.dumps({"scoring": scoring, "streams": results,
                                     "judged_on": JUDGED_ON, "events_per_run": worker_events,
                                     "quick": args.quick, "cpus": os.cpu_count()},
                                    option=orjson.OPT_INDENT_2).decode())
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
