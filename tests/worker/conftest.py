"""Fixtures for the model worker tests: a small fitted Prophet (fitted once per
session), readings produced straight into the test's Kafka topic, a worker
subprocess pointed at the test's topics, database and model folder, and
readers for the three places results land."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prophet import Prophet
from prophet.serialize import model_to_json

from contracts.clients import kafka_consumer, kafka_producer
from contracts.events import Reading, make_event_id
from contracts.settings import Settings
from model_worker.train import demo_frame
from tests.support import MqttCollector, free_port

REPO = Path(__file__).resolve().parents[2]
NS_PER_S = 1_000_000_000


def _fit(seed: int, level: float) -> Prophet:
    frame = demo_frame(days=2, step_min=10, seed=seed)  # 288 rows: a fit of about a second
    frame["y"] += level
    model = Prophet(daily_seasonality=True, weekly_seasonality=False, yearly_seasonality=False)
    return model.fit(frame)


@pytest.fixture(scope="session")
def prophet_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fitted Prophet models as JSON files: `a` and `b` (b sits 5 units higher)."""
    root = tmp_path_factory.mktemp("prophet")
    files = {}
    for name, seed, level in (("a", 1, 0.0), ("b", 2, 5.0)):
        path = root / f"{name}.json"
        path.write_text(model_to_json(_fit(seed, level)))
        files[name] = path
    return files


@pytest.fixture
def model_dir(tmp_path: Path, prophet_models: dict[str, Path]) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(prophet_models["a"], folder / "default.json")
    return folder


def make_readings(count: int, *, devices: int = 4, sensor: str = "temperature",
                  start_ns: int | None = None, step_s: float = 1.0) -> list[Reading]:
    start_ns = start_ns or time.time_ns() - count * int(step_s * NS_PER_S)
    readings = []
    for i in range(count):
        device = f"dev-{i % devices}"
        ts_ns = start_ns + int(i * step_s * NS_PER_S)
        readings.append(Reading(event_id=make_event_id(device, sensor, ts_ns), device_id=device,
                                sensor=sensor, ts_ns=ts_ns, value=21.0 + (i % 7) * 0.3))
    return readings


@pytest.fixture
def produce(settings: Settings) -> Callable[[list[Reading]], None]:
    def _produce(readings: list[Reading]) -> None:
        producer = kafka_producer(settings)
        for reading in readings:
            producer.produce(settings.kafka_topic_readings, value=reading.to_json(),
                             key=reading.device_id.encode())
            producer.poll(0)
        assert producer.flush(30) == 0, "readings not delivered to Kafka"
    return _produce


def read_analytics(settings: Settings, expected: int, timeout_s: float = 30.0,
                   idle_s: float = 2.0) -> list[dict[str, Any]]:
    """Committed results on the analytics topic: reads until `expected` arrived
    and then `idle_s` more without news (so duplicates would show)."""
    consumer = kafka_consumer(settings, f"reader-{time.time_ns()}")
    consumer.subscribe([settings.kafka_topic_analytics])
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    last_news = time.monotonic()
    try:
        while time.monotonic() < deadline:
            messages = consumer.consume(1000, timeout=0.5)
            for message in messages:
                value = message.value()
                if message.error() is None and value is not None:
                    results.append(orjson.loads(value))
            if messages:
                last_news = time.monotonic()
            elif len(results) >= expected and time.monotonic() - last_news >= idle_s:
                break
    finally:
        consumer.close()
    return results


@pytest.fixture
def mqtt_collector(settings: Settings, unique: str) -> Iterator[Callable[[], MqttCollector]]:
    made: list[MqttCollector] = []

    def _make() -> MqttCollector:
        made.append(MqttCollector(settings, f"t/{unique}/analytics/#"))
        return made[-1]

    yield _make
    for collector in made:
        collector.close()


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = int(env["WORKER_HTTP_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "model_worker"], cwd=REPO,
                                     env=self.env, stdout=log, stderr=log)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def ready(self) -> dict[str, Any] | None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2) as r:
                return dict(orjson.loads(r.read()))
        except urllib.error.HTTPError as exc:
            return dict(orjson.loads(exc.read()))
        except OSError:
            return None

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool],
                   timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        details: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            details = self.ready()
            if details is not None and predicate(details):
                return details
            time.sleep(0.2)
        raise AssertionError(f"worker /ready never matched; last: {details}\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def worker(services: Settings, unique: str, model_dir: Path,
           tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory of `python -m model_worker` subprocesses on this test's topics."""
    env = {**os.environ,
           "KAFKA_TOPIC_READINGS": services.kafka_topic_readings,
           "KAFKA_TOPIC_DLQ": services.kafka_topic_dlq,
           "KAFKA_TOPIC_ANALYTICS": services.kafka_topic_analytics,
           "KAFKA_PARTITIONS": str(services.kafka_partitions),
           "MONGO_DB": services.mongo_db,
           "WORKER_GROUP": services.worker_group,
           "WORKER_INSTANCE_ID": f"worker-{unique}",
           "WORKER_HTTP_PORT": str(free_port()),
           "WORKER_BATCH_SIZE": "500",
           "MODEL_PATH": str(model_dir),
           "MQTT_RESULTS_TOPIC": f"t/{unique}/analytics/{{device_id}}/{{sensor}}",
           "LOG_LEVEL": "INFO"}
    started: list[WorkerProcess] = []

    def _start(**overrides: str) -> WorkerProcess:
        process = WorkerProcess({**env, **overrides}, tmp_path / "worker.log").start()
        started.append(process)
        return process

    yield _start
    for process in started:
        process.stop()
