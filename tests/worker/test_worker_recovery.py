"""The worker process replaces Kafka clients that were fenced, on the real
Kafka: another consumer with its group.instance.id fences its static member
(the FENCED_INSTANCE_ID fatal error librdkafka also gives itself after a
session timeout during an outage), another producer with its transactional.id
fences its producer. It must keep running, rebuild, and score every reading
exactly once in MongoDB and in Kafka (read_committed)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from pymongo import MongoClient

from contracts.settings import Settings

from .conftest import WorkerProcess, make_readings, read_analytics
from .test_worker_services import wait_for_count

pytestmark = [pytest.mark.services, pytest.mark.slow]


def rebuilds(process: WorkerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^worker_kafka_rebuilds_total\{reason="([^"]+)"\} (\S+)$', text, re.MULTILINE)}


def fence_consumer(settings: Settings, instance: str) -> None:
    """Joins the worker's group as its static member until it is assigned
    partitions, which fences the worker's consumer; then leaves them to it."""
    interloper = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                           "group.id": settings.worker_group, "group.instance.id": instance,
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
    interloper.subscribe([settings.kafka_topic_readings])
    deadline = time.monotonic() + 30
    try:
        while not interloper.assignment():
            assert time.monotonic() < deadline, "the interloper was never assigned"
            interloper.poll(0.5)
    finally:
        interloper.close()


def fence_producer(settings: Settings, instance: str) -> None:
    """A newer producer epoch for the worker's transactional.id."""
    Producer({"bootstrap.servers": settings.kafka_bootstrap,
              "transactional.id": instance}).init_transactions(30)


def test_fenced_clients_are_rebuilt_and_every_result_is_written_once(
        services: Settings, mongo: MongoClient[dict[str, Any]], produce: Callable[..., None],
        worker: Callable[..., WorkerProcess], unique: str) -> None:
    instance = f"worker-{unique}"
    process = worker(WORKER_BATCH_SIZE="100")
    process.wait_until(lambda d: d["ready"])
    readings = make_readings(900, devices=6)
    ids = {r.event_id for r in readings}
    produce(readings[:300])
    assert wait_for_count(mongo, services, 300) == 300

    for fence, chunk in ((fence_consumer, readings[300:600]), (fence_producer, readings[600:])):
        before = sum(rebuilds(process).values())
        fence(services, instance)
        # The fenced consumer learns it on its next heartbeat, the fenced
        # producer on its next transaction: these readings need one.
        produce(chunk)
        deadline = time.monotonic() + 60
        while sum(rebuilds(process).values()) <= before:
            assert process.proc is not None and process.proc.poll() is None, process.log_tail()
            assert time.monotonic() < deadline, f"no rebuild after {fence.__name__}"
            time.sleep(0.5)
        process.wait_until(lambda d: d["ready"] and d["kafka"] is True, timeout_s=60)

    assert wait_for_count(mongo, services, len(ids), timeout_s=90) == len(ids)
    documents = [d["_id"] for d in mongo[services.mongo_db]["analytics"].find({}, {"_id": 1})]
    assert Counter(documents) == Counter(ids)
    kafka = Counter(r["event_id"] for r in read_analytics(services, len(ids), timeout_s=60))
    assert kafka == Counter(ids), "a result missing or doubled in Kafka analytics"
    seen = rebuilds(process)
    assert sum(seen.values()) >= 2 and set(seen) <= {"fatal", "fenced_instance_id",
                                                    "unknown_member_id", "hung",
                                                    "invalid_producer_epoch", "state",
                                                    "abort_failed"}, seen
    assert process.log_path.read_text().count("kafka clients unusable; rebuilding") == sum(
        seen.values())
    assert process.stop() == 0
