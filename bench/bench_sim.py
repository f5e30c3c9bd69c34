"""How many devices one simulator process sustains at 1 Hz, and how many QoS 1
messages a second it gets acknowledged with few devices, with its CPU and RSS.

    python -m bench.bench_sim [--quick]

Runs `python -m edge_simulator` as a child process against a throwaway
Mosquitto on a free port (never the shared broker), and measures the child
with psutil over a steady window after every device has connected.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from contracts.settings import get_settings
from edge_simulator.local_broker import ThrowawayBroker, free_port

RESULTS = Path(__file__).resolve().parent / "results" / "bench_sim.json"
TARGET_DEVICES = 2000
TARGET_MSG_S = 20_000


def simulator_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("simulator_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def wait_connected(port: int, devices: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if simulator_metrics(port).get("simulator_devices_connected", 0) >= devices:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{devices} devices did not all connect within {timeout}s")


def run_case(broker: ThrowawayBroker, devices: int, rate: float, window_s: float) -> dict:
    http_port = free_port()
    env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(broker.port),
           "LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "edge_simulator", "--devices", str(devices),
           "--rate", str(rate), "--sensors", "temperature", "--jitter", "0.1",
           "--spike-rate", "0", "--dropout-rate", "0", "--seed", "1",
           "--device-prefix", f"bench{devices}x{int(rate)}", "--http-port", str(http_port),
           "--drain-timeout", "5"]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        connect_s = wait_connected(http_port, devices, timeout=120)
        proc = psutil.Process(child.pid)
        time.sleep(1.0)  # let the burst of first ticks pass
        before = simulator_metrics(http_port)
        proc.cpu_percent(None)
        t0 = time.monotonic()
        time.sleep(window_s)
        cpu = proc.cpu_percent(None)
        elapsed = time.monotonic() - t0
        after = simulator_metrics(http_port)
        rss_mb = proc.memory_info().rss / 2**20
    finally:
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    summary = json.loads(out.decode().strip().splitlines()[-1])["summary"]
    acked_s = (after["simulator_messages_acked_total"]
               - before["simulator_messages_acked_total"]) / elapsed
    return {"devices": devices, "rate_hz": rate, "offered_msg_s": devices * rate,
            "acked_msg_s": round(acked_s, 1), "cpu_percent": round(cpu, 1),
            "rss_mb": round(rss_mb, 1), "connect_all_s": round(connect_s, 2),
            "final": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer cases, shorter windows")
    args = parser.parse_args()
    window = 4.0 if args.quick else 10.0
    fleet_sizes = [500, 2000] if args.quick else [500, 1000, 2000]
    # Offered a little above what one core acks, spread over few devices (each
    # device keeps at most --inflight unacked, so one device is round-trip bound).
    throughput = ([(8, 2500.0), (16, 1500.0)] if args.quick
                  else [(4, 5000.0), (8, 2500.0), (16, 1500.0)])
    settings = get_settings()
    results: dict = {"machine": {"cpus": os.cpu_count(),
                                 "load_avg_1m": round(os.getloadavg()[0], 2)},
                     "window_s": window, "fleet_1hz": [], "throughput": []}
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp, ThrowawayBroker(
            Path(tmp), settings.mqtt_username, settings.mqtt_password.get_secret_value()) as broker:
        print(f"throwaway mosquitto on port {broker.port}; load avg {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} cpus (a busy machine skews these figures)")
        print(f"{'devices':>8} {'rate':>6} {'offered/s':>10} {'acked/s':>9} {'cpu%':>6} "
              f"{'rss MB':>7} {'connect s':>9}")
        for devices in fleet_sizes:
            row = run_case(broker, devices, 1.0, window)
            results["fleet_1hz"].append(row)
            _print(row)
        for devices, rate in throughput:
            row = run_case(broker, devices, rate, window)
            results["throughput"].append(row)
            _print(row)
    largest = max(results["fleet_1hz"], key=lambda r: r["devices"])
    best = max(results["throughput"], key=lambda r: r["acked_msg_s"])
    results["ratios"] = {
        "cpu_cores_at_largest_fleet": round(largest["cpu_percent"] / 100, 3),
        "largest_fleet_vs_target_devices": round(largest["devices"] / TARGET_DEVICES, 2),
        "best_throughput_vs_target": round(best["acked_msg_s"] / TARGET_MSG_S, 3),
        "cpu_percent_per_1000_devices": round(largest["cpu_percent"] * 1000
                                              / largest["devices"], 1),
    }
    print(f"{largest['devices']} devices at 1 Hz: {largest['cpu_percent']:.0f}% of one core "
          f"(target: under 100% for {TARGET_DEVICES}); best throughput "
          f"{best['acked_msg_s']:.0f} acked msg/s = "
          f"{results['ratios']['best_throughput_vs_target']:.2f}x the {TARGET_MSG_S} target")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


def _print(row: dict) -> None:
    print(f"{row['devices']:>8} {row['rate_hz']:>6g} {row['offered_msg_s']:>10g} "
          f"{row['acked_msg_s']:>9.0f} {row['cpu_percent']:>6.1f} {row['rss_mb']:>7.1f} "
          f"{row['connect_all_s']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
