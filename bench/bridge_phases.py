"""The bridge bench's phases: each phase's own MQTT root, Kafka topics and
database, `python -m bridge` subprocesses, and `drive`, which publishes a
burst through them and times it into Kafka with the CPU split per process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from bench.mqtt_load import LeanPublishers, mosquitto_pub
from bench.proc_cpu import CpuSplit, reap_cpu_s, stack_pids
from contracts.clients import delete_topics, kafka_admin, kafka_consumer, mongo_client
from contracts.settings import Settings

REPO = Path(__file__).resolve().parent.parent
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

    def last_append_s(self) -> float | None:
        """When Kafka appended the newest record (the topics use LogAppendTime),
        as epoch seconds; None if it cannot be read."""
        newest: list[TopicPartition] = []
        for p in range(PARTITIONS):
            low, high = self._counter.get_watermark_offsets(TopicPartition(self.readings, p),
                                                            timeout=5)
            if high > low:
                newest.append(TopicPartition(self.readings, p, high - 1))
        reader = kafka_consumer(self.settings, f"bench-last-{uuid.uuid4().hex[:6]}")
        reader.assign(newest)
        stamps: list[int] = []
        deadline = time.monotonic() + 10
        while len(stamps) < len(newest) and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is not None and msg.error() is None:
                stamps.append(msg.timestamp()[1])
        reader.close()
        return max(stamps) / 1000 if stamps and len(stamps) == len(newest) else None

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


def service_pids() -> dict[str, list[int]]:
    """The local stack's Mosquitto, Kafka and MongoDB-wire server, for the CPU split."""
    return {name: [pid] for name, pid in stack_pids(REPO).items()
            if name in ("mosquitto", "kafka", "mongo")}


def drive(phase: Phase, bridges: list[BridgeProcess], count: int, tmp: Path,
          publishers: int = 2, load: str = "lean") -> dict[str, Any]:
    """Publishes `count` readings and times them into Kafka (acks held)."""
    per_publisher = count // publishers
    total = per_publisher * publishers
    topics = [f"{phase.root}sensors/dev{i}/temp" for i in range(publishers)]
    lean = LeanPublishers(phase.settings, topics, per_publisher) if load == "lean" else None
    meter = CpuSplit({**service_pids(), "bridge": [b.proc.pid for b in bridges]})
    started, started_wall = time.monotonic(), time.time()
    if lean is not None:
        lean.go()
    else:
        c_clients = mosquitto_pub(phase.settings, topics, per_publisher, tmp)
    done = 0
    deadline = started + 120
    while time.monotonic() < deadline:
        for bridge in bridges:
            bridge.sample_rss()
        done = phase.in_kafka()
        if done >= total:
            break
        time.sleep(0.05)
    polled = time.monotonic() - started
    if lean is not None:
        publishers_cpu = lean.results()["cpu_s"]
    else:
        publishers_cpu = sum(reap_cpu_s(proc) for proc in c_clients)
    # Polling every 50 ms (6 watermark round trips each) finds the end late by
    # up to ~0.1 s, a few % of a 2 s burst; the newest record's append time
    # says when Kafka really had them all.
    appended = phase.last_append_s() if done >= total else None
    elapsed = polled
    if appended is not None and 0 < appended - started_wall <= polled:
        elapsed = appended - started_wall
    return {"readings": total, "in_kafka": done, "seconds": round(elapsed, 3),
            "seconds_polled": round(polled, 2), "readings_per_s": round(done / elapsed),
            "peak_rss_mb": [round(b.peak_rss / 2**20, 1) for b in bridges],
            "cpu_s": meter.finish({"publishers": publishers_cpu})}


def wait_written(phase: Phase, sink: BridgeProcess, total: int, timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        sink.sample_rss()
        if sink.ready().get("sink", {}).get("written", 0) >= total:
            break
        time.sleep(0.05)
    return time.monotonic() - started


