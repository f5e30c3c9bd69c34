"""Stream analytics benchmark: `python -m bench.bench_analytics [--quick]`.

Side by side in one run, on the same readings (50 devices, 10 readings/s each,
batches of WORKER_BATCH_SIZE, default window sizes):
1. the analytics step alone (windows of every size + running statistics,
   dedupe included), scalar readings and three-axis readings (4 fields each);
2. the worker's scoring step (`score_batch`, Prophet with intervals) on the
   scalar readings;
3. the cost analytics adds to the scoring step's per-event cost (target < 20%).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from contracts.events import Reading, make_event_id
from contracts.settings import get_settings
from model_worker.analytics.engine import AnalyticsEngine, WindowPolicy
from model_worker.models import load_model
from model_worker.scoring import score_batch
from model_worker.train import demo_frame, fit_prophet, save_model

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "bench_analytics.json"
DEVICES = 50


def make_readings(count: int, axes: bool) -> list[Reading]:
    start = time.time_ns() - count * 2 * 10**6
    out = []
    for i in range(count):
        device, ts_ns = f"bench-{i % DEVICES}", start + i * 2 * 10**6  # 10/s per device
        sensor = "accelerometer" if axes else "temperature"
        reading = Reading(make_event_id(device, sensor, ts_ns), device, sensor, ts_ns)
        if axes:
            reading.values = {"x": 0.1 * (i % 7), "y": 0.2 * (i % 5), "z": 9.8 + 0.01 * (i % 3)}
        else:
            reading.value = 21.0 + (i % 11) * 0.2
        out.append(reading)
    return out


def per_event_s(step: Any, readings: list[Reading], batch_size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(readings), batch_size):
        step(readings[i:i + batch_size], i)
    return (time.perf_counter() - started) / len(readings)


def analytics_cost(readings: list[Reading], batch_size: int) -> float:
    engine = AnalyticsEngine(WindowPolicy.from_settings(get_settings()))

    def step(batch: list[Reading], first: int) -> None:
        partitions = [hash(r.device_id) % 6 for r in batch]
        engine.apply(batch, partitions, list(range(first, first + len(batch))), time.time_ns())

    return per_event_s(step, readings, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    events = 20_000 if args.quick else 200_000
    batch_size = get_settings().worker_batch_size
    scalar = make_readings(events, axes=False)
    axes = make_readings(events, axes=True)

    scalar_s = analytics_cost(scalar, batch_size)
    axes_s = analytics_cost(axes, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "default.json"
        save_model(fit_prophet(demo_frame())[0], path, "json")
        loaded = load_model(path, trust_pickle=False, grid_step_s=3600, now_ns=time.time_ns())
        score_batch(scalar[:batch_size], lambda s: loaded, {}, time.time_ns())  # warm the grid
        scoring_s = per_event_s(
            lambda batch, _: score_batch(batch, lambda s: loaded, {}, time.time_ns()),
            scalar, batch_size)

    figures = {
        "events": events, "batch_size": batch_size, "devices": DEVICES,
        "window_sizes_s": get_settings().analytics_window_sizes_s,
        "analytics_scalar_readings_per_s": round(1 / scalar_s),
        "analytics_scalar_us_per_event": round(scalar_s * 1e6, 2),
        "analytics_3axis_readings_per_s": round(1 / axes_s),
        "analytics_3axis_us_per_event": round(axes_s * 1e6, 2),
        "scoring_events_per_s": round(1 / scoring_s),
        "scoring_us_per_event": round(scoring_s * 1e6, 2),
        "added_to_scoring_scalar_pct": round(100 * scalar_s / scoring_s, 1),
        "added_to_scoring_3axis_pct": round(100 * axes_s / scoring_s, 1),
        "quick": args.quick, "cpus": os.cpu_count(),
    }
    print(f"analytics step, scalar readings: {figures['analytics_scalar_readings_per_s']:,} "
          f"readings/s ({figures['analytics_scalar_us_per_event']} us each)")
    print(f"analytics step, 3-axis readings (4 fields): "
          f"{figures['analytics_3axis_readings_per_s']:,} readings/s "
          f"({figures['analytics_3axis_us_per_event']} us each)")
    print(f"scoring step (Prophet with intervals): {figures['scoring_events_per_s']:,} events/s "
          f"({figures['scoring_us_per_event']} us each)")
    print(f"analytics adds {figures['added_to_scoring_scalar_pct']}% (scalar) / "
          f"{figures['added_to_scoring_3axis_pct']}% (3-axis) to the scoring step's "
          "per-event cost (target < 20%)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
