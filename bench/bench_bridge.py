"""End-to-end benchmark of the bridge on the real local services.

Run: `.venv/bin/python -m bench.bench_bridge [--readings N] [--quick]`.
QoS 1 readings go through Mosquitto into `python -m bridge` subprocesses, Kafka
and the MongoDB-wire server. Load comes from Mosquitto's C client
(`mosquitto_pub -l`, one process per device) so the publishers are not the
bottleneck; the paced latency run uses a paho publisher in its own process.
Every phase has its own MQTT root, Kafka topics (LogAppendTime, so a record's
timestamp is the broker's append time) and database. Phases, in one run:

1. one bridge, forwarder and sink in one process (`python -m bridge`)
2. one bridge, forwarder only (`python -m bridge forward`)
3. two forwarders sharing the subscription
4. the raw sink alone (`python -m bridge sink`) draining phase 2's topic
5. publish-to-Kafka-append latency at a paced 5,000 readings/s
6. the naive baseline: per message one produce + flush() and one insert_one

Figures go to bench/results/bench_bridge.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from contracts.clients import (
    delete_topics,
    kafka_admin,
    kafka_consumer,
    kafka_producer,
    mongo_client,
    mqtt_client,
    mqtt_connect,
)
from contracts.settings import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "bench_bridge.json"
PARTITIONS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Phase:
    """One phase's names: MQTT root, Kafka topics, groups and database."""

    def __init__(self, settings: Settings, run_id: str, name: str) -> None:
        self.settings, self.name = settings, name
        self.root = f"bench/{run_id}/{name}/"
        self.readings = f"bench.{run_id}.{name}.readings"
        self.dlq = f"bench.{run_id}.{name}.dlq"
        self.db = f"bench_{run_id}_{name}"
        self.env = {"BRIDGE_TOPIC_PREFIX": self.root, "KAFKA_TOPIC_READINGS": self.readings,
                    "KAFKA_TOPIC_DLQ": self.dlq, "MONGO_DB": self.db,
                    "BRIDGE_SHARE_GROUP": f"bench-{run_id}-{name}",
                    "BRIDGE_SINK_GROUP": f"bench-sink-{run_id}-{name}",
                    "BRIDGE_SESSION_EXPIRY_S": "60", "BRIDGE_SHARED_SUBSCRIPTION": "true",
                    "LOG_LEVEL": "WARNING"}
        admin = kafka_admin(settings)
        config = {"message.timestamp.type": "LogAppendTime"}
        futures = admin.create_topics([NewTopic(t, PARTITIONS, 1, config=config)
                                       for t in (self.readings, self.dlq)])
        for future in futures.values():
            future.result(30)

        self._counter = kafka_consumer(settings, f"bench-count-{uuid.uuid4().hex[:6]}")

    def in_kafka(self) -> int:
        return sum(self._counter.get_watermark_offsets(TopicPartition(self.readings, p),
                                                       timeout=5)[1]
                   for p in range(PARTITIONS))

    def cleanup(self) -> None:
        self._counter.close()
        delete_topics(self.settings, [self.readings, self.dlq])
        client = mongo_client(self.settings)
        client.drop_database(self.db)
        client.close()


class BridgeProcess:
    def __init__(self, phase: Phase, command: str, instance: int) -> None:
        self.port = free_port()
        env = {**os.environ, **phase.env, "BRIDGE_HTTP_PORT": str(self.port),
               "BRIDGE_CLIENT_ID": f"{phase.env['BRIDGE_SHARE_GROUP']}-{instance}"}
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", command], cwd=REPO,
                                     env=env, stdout=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.ready().get("ready") is not True:
            time.sleep(0.2)
        if self.ready().get("ready") is not True:
            self.stop()
            raise SystemExit(f"bridge `{command}` did not become ready: {self.ready()}")

    def ready(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2) as r:
                return dict(orjson.loads(r.read()))
        except urllib.error.HTTPError as exc:
            return dict(orjson.loads(exc.read()))
        except OSError:
            return {}

    def sample_rss(self) -> None:
        self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_payloads(path: Path, count: int, offset: int) -> None:
    base = time.time()
    with path.open("wb") as out:
        for i in range(count):
            out.write(orjson.dumps({"ts": base + (offset + i) * 1e-6, "value": float(i),
                                    "seq": offset + i}) + b"\n")


def publish_with_c_clients(settings: Settings, root: str, files: list[Path]) -> list[Any]:
    """One `mosquitto_pub -l` per file (= per device), QoS 1, all at once."""
    auth = ["-h", settings.mqtt_host, "-p", str(settings.mqtt_port), "-u",
            settings.mqtt_username, "-P", settings.mqtt_password.get_secret_value()]
    return [subprocess.Popen(["mosquitto_pub", *auth, "-q", "1", "-l",
                              "-t", f"{root}sensors/dev{i}/temp"], stdin=path.open("rb"))
            for i, path in enumerate(files)]


def drive(phase: Phase, bridges: list[BridgeProcess], count: int, tmp: Path,
          publishers: int = 2) -> dict[str, Any]:
    """Publishes `count` readings and times them into Kafka (acks held)."""
    files = []
    for i in range(publishers):
        path = tmp / f"{phase.name}-{i}.jsonl"
        write_payloads(path, count // publishers, i * count)
        files.append(path)
    total = (count // publishers) * publishers
    started = time.monotonic()
    procs = publish_with_c_clients(phase.settings, phase.root, files)
    first = None
    done = 0
    deadline = started + 120
    while time.monotonic() < deadline:
        for bridge in bridges:
            bridge.sample_rss()
        done = phase.in_kafka()
        if done and first is None:
            first = time.monotonic()
        if done >= total:
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    for proc in procs:
        proc.wait(30)
    return {"readings": total, "in_kafka": done, "seconds": round(elapsed, 2),
            "readings_per_s": round(done / elapsed),
            "peak_rss_mb": [round(b.peak_rss / 2**20, 1) for b in bridges]}


def wait_written(phase: Phase, sink: BridgeProcess, total: int, timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        sink.sample_rss()
        if sink.ready().get("sink", {}).get("written", 0) >= total:
            break
        time.sleep(0.05)
    return time.monotonic() - started


def paced_publisher(settings: Settings, topic: str, rate: int, seconds: float) -> None:
    client = mqtt_client(settings)
    mqtt_connect(client, settings)
    client.loop_start()
    interval = 1.0 / rate
    start = time.perf_counter()
    infos = []
    for i in range(int(rate * seconds)):
        target = start + i * interval
        while (now := time.perf_counter()) < target:
            time.sleep(min(0.001, target - now))
        infos.append(client.publish(topic, orjson.dumps(
            {"ts": time.time(), "value": 1.0, "seq": i}), qos=1))
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


def latency(phase: Phase, rate: int, seconds: float) -> dict[str, Any]:
    proc = multiprocessing.Process(target=paced_publisher, args=(
        phase.settings, f"{phase.root}sensors/pace/temp", rate, seconds))
    proc.start()
    proc.join(seconds + 60)
    expected = int(rate * seconds)
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


def naive_subscriber(settings: Settings, root: str, db: str, topic: str, seconds: float,
                     result: Any) -> None:
    """The seed pipeline's way: per message one produce + flush and one insert_one."""
    producer = kafka_producer(settings)
    collection = mongo_client(settings)[db]["readings"]
    done = threading.Event()
    count = [0]
    started: list[float] = []

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if not started:
            started.append(time.monotonic())
        producer.produce(topic, msg.payload)
        producer.flush()
        collection.insert_one(json.loads(msg.payload))
        count[0] += 1

    client = mqtt_client(settings)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(f"{root}#", qos=1)
    mqtt_connect(client, settings)
    client.loop_start()
    done.wait(seconds + 2)
    client.loop_stop()
    elapsed = time.monotonic() - started[0] if started else seconds
    result.put({"messages": count[0], "seconds": round(elapsed, 2),
                "messages_per_s": round(count[0] / elapsed)})


def naive(phase: Phase, seconds: float, tmp: Path) -> dict[str, Any]:
    queue: Any = multiprocessing.Queue()
    proc = multiprocessing.Process(target=naive_subscriber, args=(
        phase.settings, phase.root, phase.db, phase.readings, seconds, queue))
    proc.start()
    time.sleep(2)  # subscribed
    path = tmp / "naive.jsonl"
    write_payloads(path, 50_000, 0)
    publishers = publish_with_c_clients(phase.settings, phase.root, [path])
    result = dict(queue.get(timeout=seconds + 60))
    proc.join(10)
    for pub in publishers:
        pub.kill()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=60_000,
                        help="readings per throughput phase")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if shutil.which("mosquitto_pub") is None:
        raise SystemExit("mosquitto_pub (package mosquitto-clients) is needed for the load")
    count = 6_000 if args.quick else args.readings
    pace_s = 2.0 if args.quick else 6.0
    naive_s = 4.0 if args.quick else 8.0
    settings = get_settings()
    run_id = uuid.uuid4().hex[:6]
    phases: list[Phase] = []
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            def phase(name: str) -> Phase:
                phases.append(Phase(settings, run_id, name))
                return phases[-1]

            p1 = phase("one")
            bridge = BridgeProcess(p1, "run", 0)
            figures["one_bridge_forward_and_sink"] = drive(p1, [bridge], count, tmp)
            figures["one_bridge_forward_and_sink"]["all_in_mongo_after_s"] = round(
                figures["one_bridge_forward_and_sink"]["seconds"]
                + wait_written(p1, bridge, count), 2)
            bridge.stop()
            print("1 bridge (forward+sink):", figures["one_bridge_forward_and_sink"], flush=True)

            p2 = phase("fwd")
            bridge = BridgeProcess(p2, "forward", 0)
            figures["one_forwarder"] = drive(p2, [bridge], count, tmp)
            bridge.stop()
            print("1 forwarder:", figures["one_forwarder"], flush=True)

            p3 = phase("two")
            pair = [BridgeProcess(p3, "forward", i) for i in range(2)]
            figures["two_forwarders"] = drive(p3, pair, count, tmp, publishers=4)
            for b in pair:
                b.stop()
            print("2 forwarders:", figures["two_forwarders"], flush=True)

            sink = BridgeProcess(p2, "sink", 0)
            written_s = wait_written(p2, sink, figures["one_forwarder"]["in_kafka"])
            sink.stop()
            figures["sink_alone"] = {"documents": figures["one_forwarder"]["in_kafka"],
                                     "seconds": round(written_s, 2),
                                     "documents_per_s": round(
                                         figures["one_forwarder"]["in_kafka"] / written_s),
                                     "peak_rss_mb": round(sink.peak_rss / 2**20, 1)}
            print("sink alone:", figures["sink_alone"], flush=True)

            p5 = phase("lat")
            bridge = BridgeProcess(p5, "forward", 0)
            figures["latency"] = latency(p5, 5000, pace_s)
            bridge.stop()
            print("latency at 5,000/s:", figures["latency"], flush=True)

            figures["naive"] = naive(phase("naive"), naive_s, tmp)
            print("naive baseline:", figures["naive"], flush=True)
        finally:
            for p in phases:
                p.cleanup()
    best = figures["one_forwarder"]["readings_per_s"]
    figures["ratio_forwarder_vs_naive"] = round(best / max(1, figures["naive"]["messages_per_s"]),
                                                1)
    figures["ratio_one_process_pipeline_vs_naive"] = round(
        figures["one_bridge_forward_and_sink"]["readings"]
        / figures["one_bridge_forward_and_sink"]["all_in_mongo_after_s"]
        / max(1, figures["naive"]["messages_per_s"]), 1)
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "note": "busy shared machine; figures vary run to run"}
    print(json.dumps({k: figures[k] for k in ("ratio_forwarder_vs_naive",
                                              "ratio_one_process_pipeline_vs_naive")}))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
