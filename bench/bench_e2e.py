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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.bench_bridge import PARTITIONS, Phase, naive_subscriber
from bench.bench_sim import simulator_metrics, wait_connected
from bench.bench_worker import predict_one
from bench.common import (
    LagSampler,
    ResourceSampler,
    ResultsSubscriber,
    Series,
    busy_share,
    clear_retained,
    histogram_seconds,
    listening_pids,
    markdown_table,
    percentiles,
    plot_lines,
)
from contracts.clients import kafka_admin, kafka_consumer, mongo_client, mqtt_client, mqtt_connect
from contracts.events import datetime_to_ns, ns_to_datetime
from contracts.settings import Settings, get_settings
from model_worker.models import load_model
from model_worker.train import demo_frame, fit_prophet, save_model
from tests.support import REPO, ServiceProcess, free_port

RESULTS = REPO / "bench" / "results"
P99_LIMIT_MS = 500.0
SUSTAINED_SHARE = 0.95
DEVICES_PER_SIMULATOR = 4000


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
        kafka_admin(self.settings).delete_topics([self.analytics_topic, self.windows_topic])


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
            "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "note": "busy shared machine (other developers' jobs ran alongside)"}


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


def summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"  N={row['devices']}: could not run: {row['error'][:300]}"
    mqtt = row["mqtt_latency_ms"]
    return (f"  offered {row['offered_per_s']:,.0f}/s sustained {row['sustained_per_s']:,.0f}/s "
            f"p50 {mqtt['p50']} p95 {mqtt['p95']} p99 {mqtt['p99']} ms"
            + (f" lost {row['lost_results']} dup {row['duplicated_in_kafka']}"
               f" holds={row['holds']}" if "holds" in row else ""))


def finish(figures: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if "naive" not in figures:  # a partial run: figures only, the report needs both sides
        (RESULTS / "e2e-partial.json").write_bytes(
            orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        print("wrote bench/results/e2e-partial.json (no seed-design run: no report)")
        return
    figures["summary"] = summarise(figures)
    (RESULTS / "e2e.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    pngs = write_report(figures, RESULTS)
    docs = REPO / "docs" / "bench"
    docs.mkdir(parents=True, exist_ok=True)
    for png in pngs:
        shutil.copy(png, docs / png.name)
    print((RESULTS / "e2e.md").read_text())
    print(f"wrote bench/results/e2e.json, e2e.md and {len(pngs)} plots (copied to docs/bench/)")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a is not None and b else None


def summarise(figures: dict[str, Any]) -> dict[str, Any]:
    out = {name: summarise_variant(figures, analytics)
           for name, analytics in (("scoring", False), ("analytics", True))
           if any(c["analytics"] == analytics for c in figures["cases"])}
    out["lost_or_duplicated_total"] = sum(
        c.get("lost_readings", 0) + c.get("lost_results", 0) + c.get("duplicated_in_kafka", 0)
        + c.get("duplicated_over_mqtt", 0) for c in figures["cases"])
    return out


def summarise_variant(figures: dict[str, Any], analytics: bool) -> dict[str, Any]:
    cases = [c for c in figures["cases"] if c["analytics"] == analytics and "error" not in c]
    best = max((c for c in cases if c["holds"]), key=lambda c: c["sustained_per_s"],
               default=None)
    naive = figures["naive"]
    same_n = next((c for c in cases if c["devices"] == naive["devices"]), None)
    return {
        "saturation_devices": best["devices"] if best else None,
        "saturation_sustained_per_s": best["sustained_per_s"] if best else None,
        "highest_sustained_per_s": max((c["sustained_per_s"] for c in cases), default=None),
        "naive_sustained_per_s": naive["sustained_per_s"],
        "ratio_sustained_vs_naive": ratio(best["sustained_per_s"] if best else None,
                                          naive["sustained_per_s"]),
        "same_load_ratio_sustained": ratio(same_n["sustained_per_s"] if same_n else None,
                                           naive["sustained_per_s"]),
        "same_load_ratio_p99_naive_over_edgepipe": ratio(
            naive["mqtt_latency_ms"]["p99"], same_n["mqtt_latency_ms"]["p99"] if same_n else None),
    }


def triple(latency: dict[str, float | None]) -> str:
    return " / ".join("-" if latency[k] is None else f"{latency[k]:,.0f}"
                      for k in ("p50", "p95", "p99"))


VARIANT_LABEL = {False: "scoring", True: "scoring + windows/stats"}


def write_report(figures: dict[str, Any], folder: Path) -> list[Path]:
    """bench/results/e2e.md and three PNGs; returns the PNG paths."""
    cases = sorted((c for c in figures["cases"] if "error" not in c),
                   key=lambda c: (c["analytics"], c["devices"]))
    naive, summary, host = figures["naive"], figures["summary"], figures["machine"]
    rows = [[VARIANT_LABEL[c["analytics"]], f"{c['devices']:,}", f"{c['offered_per_s']:,.0f}",
             f"{c['sustained_per_s']:,.0f}", triple(c["mqtt_latency_ms"]),
             triple(c["mongo_latency_ms"]), c["lag_end"].get("worker"), c["lag_end"].get("sink"),
             c["lost_readings"] + c["lost_results"],
             c["duplicated_in_kafka"] + c["duplicated_over_mqtt"],
             "yes" if c["holds"] else "no"] for c in cases]
    rows.append(["seed design", f"{naive['devices']:,}", f"{naive['offered_per_s']:,.0f}",
                 f"{naive['sustained_per_s']:,.0f}", triple(naive["mqtt_latency_ms"]),
                 triple(naive["mongo_latency_ms"]), "", "", "n/a", "", "no"])
    table = markdown_table(["worker", "N devices", "offered/s", "sustained/s",
                            "device->MQTT result p50/p95/p99 ms",
                            "device->iot.analytics p50/p95/p99 ms", "worker lag at end",
                            "sink lag at end", "lost", "duplicated", "holds"], rows)
    names = sorted({n for c in cases for n in c["resources"]})
    heads = [f"N={c['devices']:,}{' +a' if c['analytics'] else ''}" for c in cases]
    usage = markdown_table(["process", *heads],
                           [[n] + [fmt_usage(c["resources"].get(n)) for c in cases]
                            for n in names])
    steps = sorted({f"{proc}: {name}" for c in cases for proc, shares in c["busy_share"].items()
                    for name in shares})
    busy = markdown_table(["step", *heads], [
        [step] + [f"{c['busy_share'].get(step.split(': ')[0], {}).get(step.split(': ')[1], 0):.2f}"
                  for c in cases] for step in steps])
    failed = [f"- N={c['devices']:,} ({VARIANT_LABEL[c['analytics']]}): {c['error'][:300]}"
              for c in figures["cases"] if "error" in c]
    lines = [f"- {VARIANT_LABEL[name == 'analytics']}: saturation at N = "
             f"{v['saturation_devices']} devices ({v['saturation_sustained_per_s']} readings/s); "
             f"{v['ratio_sustained_vs_naive']}x the seed design's sustained rate; at the same "
             f"load (N = {naive['devices']:,}) {v['same_load_ratio_sustained']}x sustained and "
             f"{v['same_load_ratio_p99_naive_over_edgepipe']}x lower p99"
             for name, v in summary.items() if isinstance(v, dict)]
    text = "\n\n".join([
        f"## End-to-end benchmark ({host['date_utc']})",
        f"Machine: {host['cpus']} cores, {host['memory_gb']} GB, Python {host['python']}, "
        f"every service on it; {host['note']}. {figures['options']['load_s']:g} s steady "
        f"window per N at {figures['options']['rate']:g} Hz per device.",
        table,
        f"Saturation point: the highest N with p99 < {P99_LIMIT_MS:.0f} ms, lag bounded and "
        f"sustained >= {SUSTAINED_SHARE:.0%} of offered. Seed design sustained "
        f"{naive['sustained_per_s']} readings/s; its subscriber had not forwarded "
        f"{naive['not_forwarded']:,} of {naive['acked']:,} acked readings when it stopped.",
        "\n".join(lines),
        "CPU (% of one core over the window) and peak RSS (MB) per process "
        "(+a: with windows/stats):",
        usage,
        "Seconds per second of the window spent in each timed step (from the services' "
        "/metrics; the worker's MongoDB and MQTT writes overlap; near 1.00 is the limit):",
        busy, *(["Cases that could not run:", "\n".join(failed)] if failed else []),
        "![throughput](throughput.png) ![p99](p99.png) ![lag](lag.png)"])
    (folder / "e2e.md").write_text(text + "\n")
    throughput: dict[str, Series] = {}
    latency: dict[str, Series] = {}
    for analytics in (False, True):
        variant = [c for c in cases if c["analytics"] == analytics]
        if not variant:
            continue
        xs = [float(c["devices"]) for c in variant]
        label = VARIANT_LABEL[analytics]
        throughput[f"offered ({label})"] = (xs, [c["offered_per_s"] for c in variant])
        throughput[f"sustained ({label})"] = (xs, [c["sustained_per_s"] for c in variant])
        latency[f"to MQTT ({label})"] = (xs, [c["mqtt_latency_ms"]["p99"] or 0 for c in variant])
        latency[f"to iot.analytics ({label})"] = (
            xs, [c["mongo_latency_ms"]["p99"] or 0 for c in variant])
    throughput["sustained (seed design)"] = ([float(naive["devices"])],
                                             [naive["sustained_per_s"]])
    latency["to MQTT (seed design)"] = ([float(naive["devices"])],
                                        [naive["mqtt_latency_ms"]["p99"] or 0])
    return [
        plot_lines(folder / "throughput.png", "Readings/s against devices (1 Hz each)",
                   "devices (N)", "readings/s", throughput, logx=True, logy=True),
        plot_lines(folder / "p99.png", "p99 latency from the device's timestamp", "devices (N)",
                   "ms", latency, logx=True, logy=True, hline=(P99_LIMIT_MS, "500 ms")),
        plot_lines(folder / "lag.png", "Model worker consumer lag (0 s = steady window start)",
                   "seconds", "records behind", {
                       f"N={c['devices']:,} {VARIANT_LABEL[c['analytics']]}": (
                           [t - c["lag_window_s"][0] for t, _ in c["lag_series"]["worker"]],
                           [v for _, v in c["lag_series"]["worker"]]) for c in cases},
                   symlogy=True),
    ]


def fmt_usage(usage: dict[str, float] | None) -> str:
    return "" if usage is None else f"{usage['cpu_percent']:.0f}% / {usage['peak_rss_mb']:.0f}"


if __name__ == "__main__":
    main()
