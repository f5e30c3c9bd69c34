"""Stream analytics benchmark: `python -m bench.bench_analytics [--quick]`.

Side by side in one run, on the same readings (50 devices, 10 readings/s each,
batches of WORKER_BATCH_SIZE, default window sizes):
1. the analytics step alone (windows of every size + running statistics,
   dedupe included), scalar readings and three-axis readings (4 fields each);
2. the worker's scoring step (`score_batch`, Prophet with intervals) on the
   scalar readings;
3. the cost analytics adds to the scoring step's per-event cost (target < 20%).

With `--writes` (needs the local services) it measures instead the stage with
its writes to the real MongoDB-wire server, Kafka and MQTT, as the worker runs
it (batches of one partition's readings), alternating a checkpoint every batch
(ANALYTICS_CHECKPOINT_INTERVAL_S=0, the earlier per-batch writes) with the
default checkpoints: readings/s, CPU per reading of this process and of the
MongoDB-wire server, Kafka and Mosquitto, and the wall time of each checkpoint
part (windows, stats, flush, state), until the last checkpoint is written.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY

from bench.bench_worker import cpu_seconds, service_processes
from bench.bench_worker import make_readings as stream
from contracts.clients import (
    ensure_topics,
    kafka_admin,
    kafka_consumer,
    kafka_producer,
    mongo_client,
    mqtt_client,
    mqtt_connect,
)
from contracts.events import Reading, make_event_id
from contracts.settings import get_settings
from model_worker.analytics.engine import AnalyticsEngine, WindowPolicy
from model_worker.analytics.stage import AnalyticsStage
from model_worker.models import load_model
from model_worker.scoring import score_batch
from model_worker.stage import ConsumedBatch
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


def partition_batches(readings: list[Reading], batch_size: int,
                      partitions: int = 6) -> list[ConsumedBatch]:
    """As the worker's consumer delivers them: each batch from one partition."""
    by_partition: dict[int, list[Reading]] = {}
    for r in readings:
        by_partition.setdefault(zlib.crc32(r.device_id.encode()) % partitions, []).append(r)
    batches = []
    offsets = dict.fromkeys(by_partition, 0)
    while any(by_partition.values()):
        for partition, queue in by_partition.items():
            chunk, by_partition[partition] = queue[:batch_size], queue[batch_size:]
            if chunk:
                start = offsets[partition]
                offsets[partition] += len(chunk)
                batches.append(ConsumedBatch("readings", chunk, [partition] * len(chunk),
                                             list(range(start, start + len(chunk)))))
    return batches


def write_parts() -> dict[str, float]:
    """Seconds spent so far in each part of the stage's checkpoints (its metrics)."""
    return {part: REGISTRY.get_sample_value("worker_analytics_write_part_seconds_sum",
                                            {"part": part}) or 0.0
            for part in ("windows", "stats", "flush", "state")}


def bench_writes(events: int, devices: int, period_s: float, rounds: int) -> dict[str, Any]:
    base = get_settings()
    services = service_processes()
    readings = stream(events, devices, period_s)
    figures: dict[str, Any] = {"events": events, "devices": devices, "device_period_s": period_s}
    for round_no in range(rounds):
        for label, interval in (("checkpoint every batch", 0.0),
                                ("checkpoints", base.analytics_checkpoint_interval_s)):
            tag = uuid.uuid4().hex[:8]
            settings = base.model_copy(update={
                "kafka_topic_windows": f"bench.{tag}.windows", "mongo_db": f"bench_{tag}",
                "analytics_checkpoint_interval_s": interval,
                "analytics_mqtt_window_topic": f"bench/{tag}/{{device_id}}/{{sensor}}/window",
                "analytics_mqtt_stats_topic": f"bench/{tag}/{{device_id}}/{{sensor}}/stats"})
            ensure_topics(settings, [settings.kafka_topic_windows])
            client = mongo_client(settings)
            mqtt = mqtt_client(settings, client_id=f"bench-{tag}")
            mqtt.max_inflight_messages_set(1000)
            mqtt_connect(mqtt, settings)
            mqtt.loop_start()
            stage = AnalyticsStage(settings, kafka_producer(settings), client[settings.mongo_db],
                                   mqtt, replay_consumer=kafka_consumer(settings, f"b-{tag}"))
            batches = partition_batches(readings, settings.worker_batch_size)
            services_cpu = cpu_seconds(services)
            parts = write_parts()
            cpu, started = time.process_time(), time.perf_counter()
            for batch in batches:
                stage.handle(batch, time.time_ns())
            stage.close()
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            services_cpu = {k: v - services_cpu[k] for k, v in cpu_seconds(services).items()}
            parts = {k: v - parts[k] for k, v in write_parts().items()}
            mqtt.loop_stop()
            mqtt.disconnect()
            client.drop_database(settings.mongo_db)
            client.close()
            kafka_admin(settings).delete_topics([settings.kafka_topic_windows])
            result = {"readings_per_s": round(events / elapsed),
                      "process_cpu_us_per_reading": round(1e6 * cpu / events, 1),
                      **{f"{k}_cpu_us_per_reading": round(1e6 * v / events, 1)
                         for k, v in services_cpu.items()},
                      # Wall time of each checkpoint part (on the checkpoint thread).
                      "checkpoint_part_s": {k: round(v, 3) for k, v in parts.items()}}
            figures.setdefault(label, []).append(result)
            print(f"round {round_no + 1}, {label}: {result['readings_per_s']:,} readings/s; "
                  f"CPU per reading: this process {result['process_cpu_us_per_reading']} us, "
                  f"MongoDB-wire server {result['mongo_cpu_us_per_reading']} us, Kafka "
                  f"{result['kafka_cpu_us_per_reading']} us, Mosquitto "
                  f"{result['mosquitto_cpu_us_per_reading']} us; checkpoint parts (s) "
                  f"{result['checkpoint_part_s']}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--writes", action="store_true",
                        help="the stage with its real writes, per batch vs checkpoints")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--device-period-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.writes:
        figures = bench_writes(20_000 if args.quick else 60_000, args.devices,
                               args.device_period_s, args.rounds)
        out = RESULTS.with_name("bench_analytics_writes.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
        print(f"figures written to {out}")
        return
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
