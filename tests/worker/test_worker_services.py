"""The worker as a process (`python -m model_worker`) on the real Kafka,
MongoDB-wire server and Mosquitto."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from contracts.events import Reading
from contracts.settings import Settings

from .conftest import MqttCollector, WorkerProcess, make_readings, read_analytics

pytestmark = pytest.mark.services


def wait_for_count(mongo: MongoClient[dict[str, Any]], settings: Settings, expected: int,
                   timeout_s: float = 60.0) -> int:
    collection = mongo[settings.mongo_db]["analytics"]
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = collection.count_documents({})
        if count >= expected:
            break
        time.sleep(0.2)
    return count


def test_results_everywhere_once_with_dead_letters(
        services: Settings, mongo: MongoClient[dict[str, Any]], produce: Callable[..., None],
        worker: Callable[..., WorkerProcess], mqtt_collector: Callable[[], MqttCollector],
        unique: str) -> None:
    collector = mqtt_collector()
    readings = make_readings(300)
    process = worker()
    process.wait_until(lambda d: d["ready"])
    produce(readings)
    from confluent_kafka import Producer
    bad = Producer({"bootstrap.servers": services.kafka_bootstrap})
    bad.produce(services.kafka_topic_readings, b'{"event_id": "x"}')
    bad.flush(10)

    ids = {r.event_id for r in readings}
    assert wait_for_count(mongo, services, len(ids)) == len(ids)
    documents = list(mongo[services.mongo_db]["analytics"].find())
    assert {d["_id"] for d in documents} == ids
    assert all(d["model"]["name"] == "default" and d["yhat_lower"] <= d["yhat"] <= d["yhat_upper"]
               for d in documents)
    kafka = read_analytics(services, len(ids))
    assert Counter(r["event_id"] for r in kafka) == Counter(ids)
    assert collector.wait_for(ids) >= ids
    dead = list(mongo[services.mongo_db]["dead_letters"].find())
    assert len(dead) == 1 and dead[0]["reason"] == "not_scorable"
    assert process.stop() == 0


def test_kill_mid_stream_and_restart_gives_each_result_once(
        services: Settings, mongo: MongoClient[dict[str, Any]], produce: Callable[..., None],
        worker: Callable[..., WorkerProcess], mqtt_collector: Callable[[], MqttCollector]) -> None:
    collector = mqtt_collector()
    readings = make_readings(20_000, devices=12)
    ids = {r.event_id for r in readings}
    produce(readings)
    first = worker(WORKER_BATCH_SIZE="200")
    partial = wait_for_count(mongo, services, 2_000)
    first.kill()
    assert 0 < partial < len(ids), "the kill should land mid-stream"
    worker(WORKER_BATCH_SIZE="2000")
    assert wait_for_count(mongo, services, len(ids), timeout_s=90) == len(ids)
    assert mongo[services.mongo_db]["analytics"].count_documents({}) == len(ids)
    kafka = Counter(r["event_id"] for r in read_analytics(services, len(ids), timeout_s=60))
    assert set(kafka) == ids
    assert max(kafka.values()) == 1, "read_committed must see each result once"
    # MQTT is at least once: a batch written but not committed before the kill is
    # published again after the restart. Every result arrives; repeats carry the same id.
    assert collector.wait_for(ids) >= ids


def stamps_of(readings: list[Reading], mongo: MongoClient[dict[str, Any]],
              settings: Settings) -> set[str]:
    ids = [r.event_id for r in readings]
    found = mongo[settings.mongo_db]["analytics"].find({"_id": {"$in": ids}}, {"model": 1})
    return {d["model"]["hash"] for d in found}


def test_hot_swap_and_corrupt_file_without_restart(
        services: Settings, mongo: MongoClient[dict[str, Any]], produce: Callable[..., None],
        worker: Callable[..., WorkerProcess], model_dir: Path,
        prophet_models: dict[str, Path]) -> None:
    process = worker()
    hash_a = process.wait_until(lambda d: d["ready"])["models"]["default"]["hash"]
    phases: list[list[Reading]] = []

    def run_phase(count: int) -> list[Reading]:
        readings = make_readings(count, start_ns=time.time_ns() - 10**12 + len(phases) * 10**11)
        phases.append(readings)
        produce(readings)
        total = sum(len(p) for p in phases)
        assert wait_for_count(mongo, services, total) == total
        return readings

    assert stamps_of(run_phase(200), mongo, services) == {hash_a}

    (model_dir / "default.json").write_text('{"truncated": ')
    details = process.wait_until(lambda d: bool(d["model_load_errors"]))
    assert details["models"]["default"]["hash"] == hash_a
    assert stamps_of(run_phase(200), mongo, services) == {hash_a}

    partial = model_dir / ".incoming"
    shutil.copy(prophet_models["b"], partial)
    partial.replace(model_dir / "default.json")
    details = process.wait_until(lambda d: d["models"]["default"]["hash"] != hash_a)
    assert details["model_load_errors"] == []
    hash_b = details["models"]["default"]["hash"]
    assert stamps_of(run_phase(200), mongo, services) == {hash_b}

    everything = {r.event_id for phase in phases for r in phase}
    kafka = Counter(r["event_id"] for r in read_analytics(services, len(everything)))
    assert kafka == Counter(everything), "no event lost or doubled across the swaps"
    assert process.stop() == 0
