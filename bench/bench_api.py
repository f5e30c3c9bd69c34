"""Benchmark of the API: `/compute/metrics` over 1 h and 24 h ranges against
the naive way (read every raw reading in the range) in the same run, and
`/ingest/sensor-logger` requests per second.

    .venv/bin/python -m bench.bench_api [--readings N] [--quick] [--db NAME]

Data (readings plus the windows and statistics stream analytics would
write, computed here in Python) goes to its own database and is reused by
later runs with the same --readings. Figures go to bench/results/bench_api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pymongo import MongoClient

from api.main import create_app
from api.metrics_logic import parse_metrics_request
from api.metrics_store import compute_metrics
from contracts.clients import (
    async_mongo_client,
    delete_topics,
    ensure_topics,
    mongo_client,
)
from contracts.collections import READINGS, WINDOWS, ensure_indexes
from contracts.events import NS_PER_S, Reading, make_event_id, ns_to_iso
from contracts.settings import Settings, get_settings
from contracts.windows import Moments, WindowRecord, series_id

RESULTS = Path(__file__).resolve().parent / "results" / "bench_api.json"
DEVICES = ("bench-1", "bench-2", "bench-3", "bench-4")
SPAN_S = 48 * 3600
START_NS = 1_763_596_800 * NS_PER_S  # 2025-11-20 00:00:00 UTC
BATCH = 10_000


def generate(n: int) -> Any:
    """Readings spread evenly over 48 h across the devices, in time order."""
    rng = random.Random(42)
    step_ns = SPAN_S * NS_PER_S * len(DEVICES) // n
    for i in range(n):
        device = DEVICES[i % len(DEVICES)]
        ts = START_NS + (i // len(DEVICES)) * step_ns + rng.randrange(1_000_000)
        yield Reading(make_event_id(device, "temp", ts), device, "temp", ts,
                      value=round(20 + 5 * rng.random() + (i % 977) / 100, 3),
                      received_at_ns=ts)


def load(db: Any, n: int, sizes: tuple[int, ...], points_max: int, grace_ns: int) -> None:
    """Readings, and what stream analytics would have stored after the last of
    them: the windows closed by then (smallest ones with their points) and one
    statistics document per series, whose `last_ts_ns` is the stream time."""
    meta = db.bench_meta.find_one({"_id": "spec"})
    layout = {"readings": n, "sizes": list(sizes), "points_max": points_max, "layout": 5}
    if meta and meta.get("complete") and all(meta.get(k) == v for k, v in layout.items()):
        print(f"reusing {n:,} readings and their windows in {db.name}")
        return
    for name in ("readings", "windows", "stats", "bench_meta"):
        db[name].drop()
    windows: dict[tuple[str, int, int], WindowRecord] = {}
    stats: dict[str, Moments] = {}
    started = time.perf_counter()
    batch: list[dict[str, Any]] = []
    done, last_ts = 0, 0
    for reading in generate(n):
        assert reading.value is not None
        batch.append(reading.to_document())
        stats.setdefault(reading.device_id, Moments()).add(reading.value)
        last_ts = max(last_ts, reading.ts_ns)
        for size in sizes:
            start = reading.ts_ns - reading.ts_ns % (size * NS_PER_S)
            record = windows.get((reading.device_id, size, start))
            if record is None:
                record = windows[(reading.device_id, size, start)] = WindowRecord(
                    reading.device_id, "temp", "value", size, start, Moments(), reading.ts_ns,
                    reading.ts_ns, points=[] if size == sizes[0] else None)
            record.moments.add(reading.value)
            record.last_ts_ns = reading.ts_ns
            if record.points is not None:
                record.points.append((reading.ts_ns, reading.value))
        if len(batch) == BATCH:
            db.readings.insert_many(batch, ordered=False)
            done += len(batch)
            batch = []
            rate = done / (time.perf_counter() - started)
            print(f"\r  inserted {done:,}/{n:,} readings ({rate:,.0f}/s)", end="", flush=True)
    if batch:
        db.readings.insert_many(batch, ordered=False)
    add_children(windows, sizes)
    docs = []
    for w in windows.values():
        if w.end_ns + grace_ns > last_ts:
            continue  # still open at the stream time: not written yet
        if w.points is not None and len(w.points) > points_max:
            w.points = None
        docs.append(w.to_document())
    for i in range(0, len(docs), BATCH):
        db.windows.insert_many(docs[i:i + BATCH], ordered=False)
    db.stats.insert_many([{"_id": series_id(device, "temp", "value"), "device_id": device,
                           "sensor": "temp", "field": "value", **m.to_dict(),
                           "last_ts_ns": last_ts} for device, m in stats.items()])
    print(f"\n  {n:,} readings and {len(docs):,} windows in "
          f"{time.perf_counter() - started:.1f} s")
    ensure_indexes(db, (READINGS, WINDOWS))
    db.bench_meta.insert_one({"_id": "spec", "complete": True, **layout})


def add_children(windows: dict[tuple[str, int, int], WindowRecord],
                 sizes: tuple[int, ...]) -> None:
    """Each larger window holds its next smaller windows' moments, as the worker writes."""
    for (device, size, start), record in windows.items():
        if size == sizes[0]:
            continue
        smaller = sizes[sizes.index(size) - 1]
        if size % smaller:
            continue
        step = smaller * NS_PER_S
        record.children = [(s, windows[(device, smaller, s)].moments)
                           for s in range(start, start + size * NS_PER_S, step)
                           if (device, smaller, s) in windows]
        record.children_size_s = smaller


def ranges(hours: int, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """Unaligned ranges inside the data, so every answer needs raw edges."""
    latest = START_NS + (SPAN_S - hours * 3600) * NS_PER_S
    found = []
    for _ in range(count):
        start = rng.randrange(START_NS, latest)
        found.append((start, start + hours * 3600 * NS_PER_S))
    return found


def body(start: int, end: int) -> dict[str, Any]:
    return {"temp": ["count", "min", "max", "average", "std"],
            "from": ns_to_iso(start), "to": ns_to_iso(end)}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(p95 * 1000, 2), "n": len(ordered)}


def time_api(url: str, spans: list[tuple[int, int]], budget_s: float,
             before_each: Any = None) -> tuple[list[float], list[Any]]:
    samples: list[float] = []
    answers: list[Any] = []
    stop_at = time.monotonic() + budget_s
    with httpx.Client(timeout=600) as http:
        http.post(url + "/compute/metrics", json=body(*spans[0]))  # warm-up
        for start, end in spans:
            if len(samples) >= 2 and time.monotonic() > stop_at:
                break
            if before_each is not None:
                before_each()
            began = time.perf_counter()
            response = http.post(url + "/compute/metrics", json=body(start, end))
            samples.append(time.perf_counter() - began)
            response.raise_for_status()
            answers.append(response.json()["result"]["temp"])
    return samples, answers


def time_naive(settings: Settings, spans: list[tuple[int, int]],
               budget_s: float) -> tuple[list[float], list[Any]]:
    """The same computation reading every raw reading in the range (no windows),
    in-process: no HTTP overhead, which only flatters the naive side."""
    async def run() -> tuple[list[float], list[Any]]:
        client = async_mongo_client(settings)
        db = client[settings.mongo_db]
        samples: list[float] = []
        answers: list[Any] = []
        stop_at = time.monotonic() + budget_s
        try:
            for start, end in spans:
                if len(samples) >= 2 and time.monotonic() > stop_at:
                    break
                request = parse_metrics_request(body(start, end), max_days=366)
                began = time.perf_counter()
                result = await compute_metrics(db, request, None)
                samples.append(time.perf_counter() - began)
                answers.append(result["temp"])
        finally:
            await client.close()
        return samples, answers

    return asyncio.run(run())


def ingest_rate(url: str, seconds: float, workers: int) -> dict[str, float]:
    rng = random.Random(1)
    stop_at = time.monotonic() + seconds
    counts = [0] * workers

    def worker(index: int) -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop_at:
                now = time.time_ns()
                payload = [{"name": "accelerometer", "time": now + i * 1000,
                            "values": {"x": rng.random(), "y": rng.random(), "z": rng.random()}}
                           for i in range(10)]
                response = http.post(url + "/ingest/sensor-logger", params={"token": TOKEN},
                                     json={"messageId": counts[index], "sessionId": "bench",
                                           "deviceId": f"bench-phone-{index}",
                                           "payload": payload})
                response.raise_for_status()
                counts[index] += 1

    began = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, range(workers)))
    elapsed = time.perf_counter() - began
    total = sum(counts)
    return {"requests_per_s": round(total / elapsed, 1),
            "readings_per_s": round(10 * total / elapsed, 1), "requests": total,
            "concurrency": workers, "readings_per_request": 10}


TOKEN = "bench-token"


def serve(settings: Settings) -> tuple[str, Any, uvicorn.Server, threading.Thread]:
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("uvicorn did not start within 30 s")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", app, server, thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 100k readings")
    parser.add_argument("--db", default="bench_api")
    parser.add_argument("--sizes", default="10,60,3600,21600,86400",
                        help="window sizes in seconds (the worker's ANALYTICS_WINDOW_SIZES_S)")
    parser.add_argument("--budget-s", type=float, default=120,
                        help="stop repeating a case after this long (at least 2 samples)")
    args = parser.parse_args()
    n = 100_000 if args.quick and args.readings == 1_000_000 else args.readings
    repeats = 5 if args.quick else 40
    naive_repeats = 3 if args.quick else 5
    sizes = tuple(sorted({int(x) for x in args.sizes.split(",")}))
    get_settings.cache_clear()
    topic = f"bench.api.{time.time_ns()}"
    settings = get_settings().model_copy(update={
        "mongo_db": args.db, "kafka_topic_readings": topic,
        "api_ingest_token": type(get_settings().api_ingest_token)(TOKEN),
        "analytics_window_sizes_s": list(sizes)})
    mongo: MongoClient[dict[str, Any]] = mongo_client(settings)
    print(f"data: {n:,} readings, {len(DEVICES)} devices, 48 h")
    print(f"data: window sizes {sizes} s, up to {settings.analytics_window_points_max} points "
          "per smallest window")
    load(mongo[settings.mongo_db], n, sizes, settings.analytics_window_points_max,
         settings.analytics_grace_ms * 1_000_000)
    ensure_topics(settings, [topic])
    url, app, server, thread = serve(settings)
    rng = random.Random(3)
    figures: dict[str, Any] = {"readings": n, "devices": len(DEVICES), "span_h": 48,
                               "window_sizes_s": list(sizes),
                               "machine": "shared 2-core machine, busy with other work"}

    def drop_cache() -> None:
        app.state.metrics_windows = None

    try:
        for hours in (1, 24):
            spans = ranges(hours, repeats, rng)
            # Cold: the cache of final windows emptied before every request, so
            # every window is a lookup; warm: the cache kept across the run.
            cold_s, cold_answers = time_api(url, spans, args.budget_s, drop_cache)
            warm_s, warm_answers = time_api(url, spans, args.budget_s)
            naive_s, naive_answers = time_naive(settings, spans[:naive_repeats], args.budget_s)
            for answers in (cold_answers, warm_answers):
                for got, want in zip(answers, naive_answers, strict=False):
                    assert got["count"] == want["count"] and got["max"] == want["max"], (
                        got, want)
            cold_p, warm_p, naive_p = (percentiles(cold_s), percentiles(warm_s),
                                       percentiles(naive_s))
            rows = cold_answers[0]["count"]
            speedup = round(naive_p["p50_ms"] / cold_p["p50_ms"], 1)
            figures[f"metrics_{hours}h"] = {"cold": cold_p, "warm": warm_p, "naive": naive_p,
                                            "speedup_p50_cold": speedup,
                                            "readings_in_range": rows}
            print(f"/compute/metrics {hours:>2} h ({rows:,} readings): cold p50 "
                  f"{cold_p['p50_ms']} ms p95 {cold_p['p95_ms']} ms | warm p50 "
                  f"{warm_p['p50_ms']} ms p95 {warm_p['p95_ms']} ms | naive p50 "
                  f"{naive_p['p50_ms']} ms p95 {naive_p['p95_ms']} ms "
                  f"(n={naive_p['n']}) | {speedup}x (cold)", flush=True)
        figures["ingest"] = ingest_rate(url, 3 if args.quick else 10, 4)
        print(f"/ingest/sensor-logger: {figures['ingest']['requests_per_s']} requests/s "
              f"({figures['ingest']['readings_per_s']} readings/s, 4 clients, 10 per request)")
    finally:
        server.should_exit = True
        thread.join(15)
        delete_topics(settings, [topic])
    target = figures["metrics_24h"]
    figures["targets"] = {"p95_24h_under_50ms_cold": target["cold"]["p95_ms"] < 50,
                          "p95_24h_under_50ms_warm": target["warm"]["p95_ms"] < 50,
                          "speedup_24h_at_least_20x": target["speedup_p50_cold"] >= 20}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"targets: {figures['targets']}  (figures in {RESULTS})")


if __name__ == "__main__":
    main()
