"""Micro-benchmark of the bridge's pure half: route matching and decoding.

Run: `.venv/bin/python -m bench.bench_codecs [--seconds 1.0]`. One process,
one core; each case runs for about `--seconds` and reports payloads/s and
readings/s. Next to the real path it times a baseline written the obvious way
(stdlib `json` plus a pydantic model per message) so the ratio comes from the
same run on the same machine. Figures go to bench/results/bench_codecs.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from pydantic import BaseModel

from bridge.codecs import decode
from bridge.routes import key_for, load_routes, match_route
from contracts.events import Reading, make_event_id
from contracts.settings import get_settings

RESULTS = Path(__file__).resolve().parent / "results" / "bench_codecs.json"
SAMPLE_BATCH = Path(__file__).resolve().parent.parent / "tests" / "data" / \
    "sensor_logger_batch.json"
TS_NS = 1714564800123456789
RECEIVED_NS = TS_NS + 1_000_000_000
FORWARD = "forward step json_reading (match+decode+key+json)"
BASELINE = "baseline: stdlib json + pydantic + json out"


class NaiveReading(BaseModel):
    ts: float
    value: float
    unit: str | None = None
    seq: int | None = None


def payloads() -> dict[str, tuple[str, list[bytes]]]:
    """Case name -> (topic, distinct payloads to cycle through)."""
    scalar = [orjson.dumps({"ts": (TS_NS + i * 1_000_000) // 1_000_000, "value": 20 + i % 7 * 0.1,
                            "unit": "degC", "seq": i}) for i in range(1000)]
    iso = [orjson.dumps({"ts": f"2024-05-01T12:00:{i % 60:02d}.{i % 1000:03d}Z",
                         "value": float(i)}) for i in range(1000)]
    axes = [orjson.dumps({"ts": TS_NS + i, "value": {"x": 0.01 * i, "y": -0.02, "z": 9.81}})
            for i in range(1000)]
    image = [orjson.dumps({"sensorId": "camera-1", "image": str(i % 38 + 1),
                           "collectedAt": f"2024-05-01 12:{i // 60 % 60:02d}:{i % 60:02d}"})
             for i in range(1000)]
    batch = SAMPLE_BATCH.read_bytes()
    return {
        "json_reading (epoch ms)": ("sensors/dev-1/temp", scalar),
        "json_reading (ISO-8601)": ("sensors/dev-1/temp", iso),
        "json_reading (axes, ns)": ("sensors/dev-1/accel", axes),
        "seed_image": ("Image", image),
        "sensor_logger (14-entry batch)": ("sensor-logger", [batch]),
    }


def run_for(seconds: float, step: Callable[[bytes], int], items: list[bytes]) -> tuple[int, int,
                                                                                          float]:
    """(payloads, readings, elapsed s), timed in rounds over `items`."""
    done = produced = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for item in items:
            produced += step(item)
        done += len(items)
        now = time.perf_counter()
        if now >= deadline:
            return done, produced, now - start


def interleaved(seconds: float, cases: dict[str, tuple[Callable[[bytes], int], list[bytes]]],
                rounds: int = 5) -> dict[str, dict[str, float]]:
    """Every case gets `seconds` in total, in short alternating slices, so load
    from other processes on a shared machine falls on all cases alike."""
    totals = {name: [0, 0, 0.0] for name in cases}
    for _ in range(rounds):
        for name, (step, items) in cases.items():
            done, produced, elapsed = run_for(seconds / rounds, step, items)
            totals[name][0] += done
            totals[name][1] += produced
            totals[name][2] += elapsed
    return {name: {"payloads_per_s": done / elapsed, "readings_per_s": produced / elapsed,
                   "us_per_payload": elapsed / done * 1e6}
            for name, (done, produced, elapsed) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case")
    args = parser.parse_args()
    settings = get_settings()
    routes = load_routes(settings)
    limit = settings.bridge_max_payload_bytes

    def decode_step(topic: str) -> Callable[[bytes], int]:
        matched = match_route(routes, topic)
        assert matched is not None
        route, fields = matched

        def step(payload: bytes) -> int:
            return len(decode(route, fields, topic, payload, qos=1, received_at_ns=RECEIVED_NS,
                              max_payload_bytes=limit))
        return step

    def forward_step(topic: str) -> Callable[[bytes], int]:
        """What the forwarder does per message: match, decode, key and serialize."""
        def step(payload: bytes) -> int:
            matched = match_route(routes, topic)
            assert matched is not None
            route, fields = matched
            readings = decode(route, fields, topic, payload, qos=1, received_at_ns=RECEIVED_NS,
                              max_payload_bytes=limit)
            for reading in readings:
                key_for(route, reading)
                reading.to_json()
            return len(readings)
        return step

    def naive_step(payload: bytes) -> int:
        model = NaiveReading.model_validate(json.loads(payload))
        reading = Reading(event_id=make_event_id("dev-1", "temp", int(model.ts * 1_000_000)),
                          device_id="dev-1", sensor="temp", ts_ns=int(model.ts * 1_000_000),
                          value=model.value, unit=model.unit, seq=model.seq)
        json.dumps(reading.to_dict()).encode()
        return 1

    cases: dict[str, tuple[Callable[[bytes], int], list[bytes]]] = {}
    samples = payloads()
    for name, (topic, items) in samples.items():
        cases[f"decode {name}"] = (decode_step(topic), items)
    topic, items = samples["json_reading (epoch ms)"]
    cases[FORWARD] = (forward_step(topic), items)
    cases[BASELINE] = (naive_step, items)
    print(f"bench_codecs on {platform.python_implementation()} {platform.python_version()}, "
          f"{args.seconds:.1f} s per case in 5 interleaved slices, one core")
    figures = interleaved(args.seconds, cases)
    print(f"{'case':52} {'payloads/s':>11} {'readings/s':>11} {'µs/payload':>10}")
    for name, row in figures.items():
        print(f"{name:52} {row['payloads_per_s']:11,.0f} {row['readings_per_s']:11,.0f} "
              f"{row['us_per_payload']:10.2f}")
    ratio = figures[FORWARD]["payloads_per_s"] / figures[BASELINE]["payloads_per_s"]
    print(f"forward step vs baseline: {ratio:.2f}x (the forward step also matches the route, "
          "checks ids and time range, and builds the Kafka key)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"seconds_per_case": args.seconds, "cases": figures,
                                   "forward_vs_baseline": ratio}, indent=2) + "\n")
    print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
