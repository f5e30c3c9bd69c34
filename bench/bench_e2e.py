"""End-to-end benchmark: the whole pipeline on the local real services, driven
by the simulator with N devices, side by side with the seed pipeline's design.

    python -m bench.bench_e2e [--devices 10,100,1000] [--rate 1] [--quick]

For each N: `python -m bridge forward`, `python -m bridge sink`,
`python -m model_worker` and `python -m api` start on the case's own MQTT root,
Kafka topics and database; `python -m edge_simulator` runs N devices at
`--rate` Hz. Once every device is connected, a steady window of `--load-s`
seconds is measured: offered and sustained readings/s, device-to-result
latency over MQTT (arrival minus the reading's `ts`) and to `iot.analytics`
(`scored_at - ts` stored in each document: the worker stamps `scored_at` just
before its writes), consumer lag of the worker's and the sink's groups each
second, CPU and peak RSS of every process (Mosquitto, Kafka and the
MongoDB-wire server found by their listening ports), and after the drain the
readings lost or duplicated. After the list, N doubles while the last case
held (p99 under 500 ms, lag bounded, sustained >= 95% of offered).

The seed design runs on the same load (bench_bridge's naive subscriber:
per-message produce+flush and insert_one; and a per-message Prophet `predict`
scorer, bench_worker's `predict_one`). Figures go to bench/results/e2e.json,
bench/results/e2e.md and PNG plots there (copied to docs/bench/).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.bench_bridge import PARTITIONS, naive_subscriber
from bench.bench_sim import simulator_metrics, wait_connected
from bench.bench_worker import predict_one
from bench.common import (
    LagSampler,
    ResourceSampler,
    ResultsSubscriber,
    busy_share,
    histogram_seconds,
)
from bench.e2e_case import (
    Case,
    drain,
    lag_at,
    mongo_latency,
    service_pids,
    stop_simulators,
    window_figures,
)
from bench.e2e_report import P99_LIMIT_MS, SUSTAINED_SHARE, finish, summary_line
from contracts.clients import kafka_consumer, mongo_client, mqtt_client, mqtt_connect
from contracts.events import datetime_to_ns
from contracts.settings import Settings, get_settings
from model_worker.models import load_model
from model_worker.train import demo_frame, fit_prophet, save_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default=os.environ.get("BENCH_E2E_DEVICES", "10,100,1000"),
                        help="device counts N, comma-separated (env BENCH_E2E_DEVICES)")
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per device")
    parser.add_argument("--load-s", type=float, default=25.0, help="steady window per N")
    parser.add_argument("--max-devices", type=int, default=32_000,
                        help="stop doubling N here")
    parser.add_argument("--no-step-up", action="store_true",
                        help="only the listed N, do not search for the highest")
    parser.add_argument("--naive-devices", type=int, default=1000,
                        help="N of the seed design's run (0: skip it)")
    parser.add_argument("--variants", default="scoring,analytics",
                        help="worker variants, comma-separated: scoring (ANALYTICS_ENABLED="
                             "false) and/or analytics (windows and running statistics too)")
    parser.add_argument("--forwarders", type=int, default=1, help="bridge forwarder processes")
    parser.add_argument("--workers", type=int, default=1, help="model worker processes")
    parser.add_argument("--budget-s", type=float, default=1020.0,
                        help="no new step-up case starts after this many seconds")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.load_s, args.no_step_up, args.naive_devices = "10,100", 8.0, True, 50
    return args


def run_case(settings: Settings, run_id: str, devices: int, analytics: bool,
             args: argparse.Namespace, model_dir: Path, tmp: Path) -> dict[str, Any]:
    case = Case(settings, run_id, f"n{devices}{'a' if analytics else 's'}", tmp, analytics)
    offered = devices * args.rate
    try:
        started = time.monotonic()
        case.start_pipeline(model_dir, args.forwarders, args.workers)
        setup_s = time.monotonic() - started
        results = ResultsSubscriber(settings, case.results_filter, f"bench-e2e-{case.name}")
        lag = LagSampler(settings, case.phase.readings, PARTITIONS,
                         {"worker": case.worker_group,
                          "sink": case.phase.env["BRIDGE_SINK_GROUP"]}).start()
        sims = case.start_simulators(devices, args.rate)
        connect_s = max(wait_connected(port, count, 180) for _, port, count in sims)
        time.sleep(2.0)  # the burst of ticks queued while devices connected passes
        pids = {n: p.proc.pid for n, p in case.procs.items() if p.proc is not None}
        pids.update({f"simulator{i}": proc.pid for i, (proc, _, _) in enumerate(sims)})
        resources = ResourceSampler(service_pids(settings, pids)).start()
        acked_before = sum(simulator_metrics(port)["simulator_messages_acked_total"]
                           for _, port, _ in sims)
        timed = {n: p.http_port for n, p in case.procs.items()
                 if (n.startswith(("worker", "sink", "forwarder"))) and p.http_port}
        timings = {n: histogram_seconds(port) for n, port in timed.items()}
        resources.mark_start()
        window = (time.monotonic() - lag.started, time.monotonic() - lag.started + args.load_s)
        steady = (time.time_ns(), time.time_ns() + int(args.load_s * 1e9))
        time.sleep(args.load_s)
        resources.mark_end()
        timings = {n: busy_share(timings[n], histogram_seconds(port), args.load_s)
                   for n, port in timed.items()}
        acked_window = sum(simulator_metrics(port)["simulator_messages_acked_total"]
                           for _, port, _ in sims) - acked_before
        acked = stop_simulators(sims)
        drained_s = drain(settings, case, results, acked, timeout_s=max(60.0, args.load_s * 4))
        lag.stop()
        resources.stop()
        results.close()
        with mongo_client(settings) as client:
            db = client[case.phase.db]
            stored = db["readings"].count_documents({})
            scored = db["analytics"].count_documents({})
        row: dict[str, Any] = {
            "devices": devices, "analytics": analytics, "rate_hz": args.rate,
            "offered_per_s": offered, "ingest_acked_per_s": round(acked_window / args.load_s, 1),
            **window_figures(results, steady, args.load_s),
            "mongo_latency_ms": mongo_latency(settings, case.phase.db, steady),
            "setup_s": round(setup_s, 1), "connect_s": round(connect_s, 1),
            "drained_after_s": drained_s, "acked": acked, "in_kafka": case.phase.in_kafka(),
            "readings_docs": stored, "analytics_docs": scored,
            "mqtt_results": len(results.arrivals), "mqtt_distinct": results.distinct_ids(),
            "lag_series": lag.series, "lag_window_s": [round(w, 2) for w in window],
            "lag_end": {name: lag_at(series, window[1]) for name, series in lag.series.items()},
            "resources": resources.figures(),
            # Seconds per second of the window each process spent in its timed steps
            # (score, write per sink, commit...): near 1.0 means that step is the limit.
            "busy_share": timings,
        }
        row["exit_codes"] = case.stop()
    finally:
        case.cleanup()
    row["lost_readings"] = acked - stored
    row["lost_results"] = acked - scored
    row["duplicated_in_kafka"] = row["in_kafka"] - acked
    row["duplicated_over_mqtt"] = row["mqtt_results"] - row["mqtt_distinct"]
    lag_limit = max(2 * settings.worker_batch_size, offered)
    row["lag_bounded"] = all(v is not None and v <= lag_limit for v in row["lag_end"].values())
    p99 = row["mqtt_latency_ms"]["p99"]
    row["holds"] = bool(p99 is not None and p99 < P99_LIMIT_MS and row["lag_bounded"]
                        and row["sustained_per_s"] >= SUSTAINED_SHARE * offered)
    return row


def naive_scorer(settings: Settings, topic: str, db: str, results_root: str,
                 model_file: str, seconds: float, out: Any) -> None:
    """The seed pipeline's scorer: per message one Prophet `predict` (with its
    sampled interval), one `insert_one`, one MQTT publish; offsets auto-committed."""
    model = load_model(Path(model_file), trust_pickle=False, grid_step_s=3600,
                       now_ns=time.time_ns()).forecaster.model  # type: ignore[attr-defined]
    consumer = kafka_consumer(settings, f"naive-{uuid.uuid4().hex[:6]}",
                              **{"enable.auto.commit": True})
    consumer.subscribe([topic])
    collection = mongo_client(settings)[db]["analytics"]
    client = mqtt_client(settings)
    mqtt_connect(client, settings)
    client.loop_start()
    scored = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error() is not None:
            continue
        payload = msg.value() or b"{}"
        try:
            body = orjson.loads(payload)
            ts_ns = datetime_to_ns(datetime.fromisoformat(body["ts"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # the seed logged and skipped what it could not parse
        row = predict_one(model, ts_ns).iloc[0]
        result = {"event_id": hashlib.blake2b(payload, digest_size=16).hexdigest(),
                  "ts_ns": ts_ns, "value": body["value"], "yhat": float(row["yhat"]),
                  "yhat_lower": float(row["yhat_lower"]), "yhat_upper": float(row["yhat_upper"])}
        collection.insert_one({**result, "scored_at": datetime.now(UTC)})
        client.publish(f"{results_root}analytics/naive/temperature", orjson.dumps(result), qos=1)
        scored += 1
    client.loop_stop()
    consumer.close()
    out.put({"scored": scored})


def run_naive(settings: Settings, run_id: str, devices: int, args: argparse.Namespace,
              model_file: Path, tmp: Path) -> dict[str, Any]:
    case = Case(settings, run_id, "naive", tmp)
    # Outside the root the naive subscriber forwards (`{root}#`), or results would loop back.
    results_root = case.phase.root.rstrip("/") + "-results/"
    ctx = multiprocessing.get_context("spawn")
    bridged: Any = ctx.Queue()
    scorer_out: Any = ctx.Queue()
    alive_s = args.load_s + 30
    try:
        results = ResultsSubscriber(settings, f"{results_root}analytics/+/+", "bench-e2e-naive")
        procs = [ctx.Process(target=naive_subscriber, args=(
                     settings, case.phase.root, case.phase.db, case.phase.readings, alive_s,
                     bridged)),
                 ctx.Process(target=naive_scorer, args=(
                     settings, case.phase.readings, case.phase.db, results_root,
                     str(model_file), alive_s, scorer_out))]
        for proc in procs:
            proc.start()
        time.sleep(8.0)  # both spawned children import and subscribe; they report nothing
        sims = case.start_simulators(devices, args.rate)
        wait_connected(sims[0][1], devices, 120)
        time.sleep(2.0)
        pids = {"naive_bridge": procs[0].pid or 0, "naive_scorer": procs[1].pid or 0,
                "simulator0": sims[0][0].pid}
        resources = ResourceSampler(service_pids(settings, pids)).start()
        resources.mark_start()
        steady = (time.time_ns(), time.time_ns() + int(args.load_s * 1e9))
        time.sleep(args.load_s)
        resources.mark_end()
        resources.stop()
        acked = stop_simulators(sims)
        results.close()
        bridge_figures = dict(bridged.get(timeout=alive_s + 60))
        scorer_figures = dict(scorer_out.get(timeout=alive_s + 60))
        for proc in procs:
            proc.join(30)
        row = {"devices": devices, "rate_hz": args.rate, "offered_per_s": devices * args.rate,
               **window_figures(results, steady, args.load_s),
               "mongo_latency_ms": mongo_latency(settings, case.phase.db, steady),
               "naive_bridge": bridge_figures, "naive_scorer": scorer_figures, "acked": acked,
               # What the seed's subscriber never forwarded (QoS 1 acked by the broker, then
               # dropped from its bounded queue while the per-message writes fell behind).
               "not_forwarded": acked - int(bridge_figures["messages"]),
               "resources": resources.figures()}
    finally:
        case.cleanup()
    return row


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> None:
    args = parse_args()
    settings = get_settings()
    run_id = uuid.uuid4().hex[:6]
    figures: dict[str, Any] = {"machine": machine(), "options": vars(args), "cases": []}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmpdir:
        tmp = Path(tmpdir)
        model_file = tmp / "models" / "default.json"
        model, _ = fit_prophet(demo_frame())
        save_model(model, model_file, "json")
        for variant in args.variants.split(","):
            analytics = variant.strip() == "analytics"
            plan = [int(n) for n in args.devices.split(",") if n.strip()]
            held: list[int] = []
            failed: list[int] = []
            refined = 0  # halving steps between the last N that held and the first that did not
            while plan:
                devices = plan.pop(0)
                print(f"{variant}: N={devices:,} devices at {args.rate:g} Hz ...", flush=True)
                try:
                    row = run_case(settings, run_id, devices, analytics, args,
                                   model_file.parent, tmp)
                except Exception as exc:  # a case that cannot run is a figure too: the limit
                    row = {"devices": devices, "analytics": analytics, "holds": False,
                           "offered_per_s": devices * args.rate,
                           "error": f"{type(exc).__name__}: {exc}"[:2000]}
                figures["cases"].append(row)
                print(summary_line(row), flush=True)
                (held if row["holds"] else failed).append(devices)
                within = time.monotonic() - started < args.budget_s
                if plan or args.no_step_up or not within:
                    continue
                low, high = max(held, default=0), min(failed, default=None)
                if high is None and 0 < low * 2 <= args.max_devices:
                    plan.append(low * 2)
                elif high is not None and low and high - low > low // 4 and refined < 2:
                    refined += 1
                    plan.append((low + high) // 2)
        if args.naive_devices:
            print(f"seed design, N={args.naive_devices} ...", flush=True)
            figures["naive"] = run_naive(settings, run_id, args.naive_devices, args, model_file,
                                         tmp)
            print(summary_line(figures["naive"]), flush=True)
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    finish(figures)


if __name__ == "__main__":
    main()
