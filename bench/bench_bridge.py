"""End-to-end benchmark of the bridge on the real local services.

Run: `.venv/bin/python -m bench.bench_bridge [--readings N] [--rounds R]
[--round-readings N] [--load lean|c] [--quick]`.
QoS 1 readings go through Mosquitto into `python -m bridge` subprocesses, Kafka
and the MongoDB-wire server. Load comes from `bench.mqtt_load` (raw QoS 1
PUBLISH packets encoded before the clock starts, one process per device) so
the load generator takes little of the CPU the system under test shares;
`--load c` uses Mosquitto's `mosquitto_pub -l` as before. The paced latency
run uses the same publisher, stamping each reading as it sends it. Every
phase has its own MQTT root, Kafka topics (LogAppendTime, so a record's
timestamp is the broker's append time) and database. Phases, in one run:

1. one bridge, forwarder and sink in one process (`python -m bridge`)
2. R rounds of: one forwarder (`python -m bridge forward`, 150,000 readings,
   a few seconds) and the naive baseline (per message one produce + flush()
   and one insert_one, over 8 s), back to back in alternating order; the
   ratio's median, min and max are reported
3. two forwarders sharing the subscription
4. the raw sink alone (`python -m bridge sink`) draining round 1's topic
5. publish-to-Kafka-append latency at a paced 5,000 readings/s

Throughput phases report the CPU seconds of each process (bench.proc_cpu):
publishers, Mosquitto, Kafka, the bridge(s), and `other` (the rest of the
machine, i.e. other work sharing the cores). Figures go to
bench/results/bench_bridge.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.bridge_naive import naive, naive_subscriber  # noqa: F401 (bench_e2e imports it here)
from bench.bridge_phases import (  # noqa: F401 (e2e_case imports PARTITIONS and Phase here)
    PARTITIONS,
    REPO,
    BridgeProcess,
    Phase,
    drive,
    service_pids,
    wait_written,
)
from bench.mqtt_load import LeanPublishers
from contracts.clients import kafka_consumer
from contracts.settings import Settings, get_settings

RESULTS = REPO / "bench" / "results" / "bench_bridge.json"


def latency(phase: Phase, rate: int, seconds: float) -> dict[str, Any]:
    """Publish-to-Kafka-append delay at a paced rate: the payload's `ts` is the
    wall clock when the publisher sent it, the record's timestamp Kafka's
    append time (both this machine's clock)."""
    expected = int(rate * seconds)
    publisher = LeanPublishers(phase.settings, [f"{phase.root}sensors/pace/temp"], expected,
                               rate=rate)
    publisher.go()
    publisher.results(timeout=seconds + 60)
    consumer = kafka_consumer(phase.settings, f"bench-lat-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([phase.readings])
    delays_ms: list[float] = []
    deadline = time.monotonic() + 60
    while len(delays_ms) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(5000, 0.5):
            if msg.error() is None:
                appended_ms = msg.timestamp()[1]
                delays_ms.append(appended_ms - orjson.loads(msg.value() or b"{}")["ts_ns"] / 1e6)
    consumer.close()
    delays_ms.sort()
    pick = (lambda q: round(delays_ms[min(len(delays_ms) - 1, int(q * len(delays_ms)))], 1)) \
        if delays_ms else (lambda q: None)
    return {"rate_per_s": rate, "seconds": seconds, "readings": len(delays_ms),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0)}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def ratio_rounds(settings: Settings, phase: Callable[[str], Phase], rounds: int, count: int,
                 naive_s: float, tmp: Path, load: str) -> dict[str, Any]:
    """One forwarder and the naive way back to back, `rounds` times (the order
    alternating, so a machine getting busier or quieter favours neither)."""
    forwarder: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    for r in range(rounds):
        for which in ("fwd", "naive") if r % 2 == 0 else ("naive", "fwd"):
            p = phase(f"{which}{r}")
            if which == "naive":
                baseline.append(naive(settings, p.root, p.db, p.readings, naive_s,
                                      service_pids(), tmp, load))
                print(f"round {r + 1} naive baseline:", baseline[-1], flush=True)
            else:
                bridge = BridgeProcess(p, "forward", 0)
                forwarder.append({**drive(p, [bridge], count, tmp, load=load),
                                  "topic": p.readings})
                bridge.stop()
                print(f"round {r + 1} 1 forwarder:", forwarder[-1], flush=True)
    ratios = [f["readings_per_s"] / max(1, n["messages_per_s"])
              for f, n in zip(forwarder, baseline, strict=True)]
    return {"forwarder": forwarder, "naive": baseline, "ratios": [round(x, 1) for x in ratios],
            "ratio": spread(ratios),
            "forwarder_readings_per_s": spread([f["readings_per_s"] for f in forwarder]),
            "naive_messages_per_s": spread([n["messages_per_s"] for n in baseline])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=60_000,
                        help="readings per throughput phase")
    parser.add_argument("--rounds", type=int, default=3,
                        help="forwarder-vs-naive rounds (median and spread reported)")
    parser.add_argument("--round-readings", type=int, default=150_000,
                        help="readings per forwarder round (a few seconds, like the naive "
                             "way's window, so both see the machine's load alike)")
    parser.add_argument("--load", choices=("lean", "c"), default="lean",
                        help="load generator: bench.mqtt_load (default) or mosquitto_pub")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.load == "c" and shutil.which("mosquitto_pub") is None:
        raise SystemExit("mosquitto_pub (package mosquitto-clients) is needed for --load c")
    count = 6_000 if args.quick else args.readings
    pace_s = 2.0 if args.quick else 6.0
    naive_s = 4.0 if args.quick else 8.0
    rounds = 1 if args.quick else args.rounds
    settings = get_settings()
    run_id = uuid.uuid4().hex[:6]
    phases: list[Phase] = []
    figures: dict[str, Any] = {"load": args.load}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            def phase(name: str) -> Phase:
                phases.append(Phase(settings, run_id, name))
                return phases[-1]

            p1 = phase("one")
            bridge = BridgeProcess(p1, "run", 0)
            figures["one_bridge_forward_and_sink"] = drive(p1, [bridge], count, tmp,
                                                           load=args.load)
            figures["one_bridge_forward_and_sink"]["all_in_mongo_after_s"] = round(
                figures["one_bridge_forward_and_sink"]["seconds"]
                + wait_written(p1, bridge, count), 2)
            bridge.stop()
            print("1 bridge (forward+sink):", figures["one_bridge_forward_and_sink"], flush=True)

            figures["rounds"] = ratio_rounds(settings, phase, rounds,
                                             count if args.quick else args.round_readings,
                                             naive_s, tmp, args.load)

            p3 = phase("two")
            pair = [BridgeProcess(p3, "forward", i) for i in range(2)]
            figures["two_forwarders"] = drive(p3, pair, count, tmp, publishers=4,
                                              load=args.load)
            for b in pair:
                b.stop()
            print("2 forwarders:", figures["two_forwarders"], flush=True)

            # The sink drains the first forwarder round's topic into MongoDB.
            p2 = next(p for p in phases if p.readings == figures["rounds"]["forwarder"][0]
                      ["topic"])
            drained = figures["rounds"]["forwarder"][0]["in_kafka"]
            sink = BridgeProcess(p2, "sink", 0)
            written_s = wait_written(p2, sink, drained)
            sink.stop()
            figures["sink_alone"] = {"documents": drained, "seconds": round(written_s, 2),
                                     "documents_per_s": round(drained / written_s),
                                     "peak_rss_mb": round(sink.peak_rss / 2**20, 1)}
            print("sink alone:", figures["sink_alone"], flush=True)

            p5 = phase("lat")
            bridge = BridgeProcess(p5, "forward", 0)
            figures["latency"] = latency(p5, 5000, pace_s)
            bridge.stop()
            print("latency at 5,000/s:", figures["latency"], flush=True)
        finally:
            for p in phases:
                p.cleanup()
    naive_median = figures["rounds"]["naive_messages_per_s"]["median"]
    figures["ratio_forwarder_vs_naive"] = figures["rounds"]["ratio"]
    figures["ratio_one_process_pipeline_vs_naive"] = round(
        figures["one_bridge_forward_and_sink"]["readings"]
        / figures["one_bridge_forward_and_sink"]["all_in_mongo_after_s"]
        / max(1, naive_median), 1)
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average": os.getloadavg(),
                          "note": "busy shared machine; figures vary run to run"}
    print(json.dumps({k: figures[k] for k in ("ratio_forwarder_vs_naive",
                                              "ratio_one_process_pipeline_vs_naive")}))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
