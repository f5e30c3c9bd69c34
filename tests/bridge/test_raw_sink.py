"""The raw sink in-process against the real Kafka and MongoDB-wire server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition
from pymongo import MongoClient

from bridge.raw_sink import RawSink
from bridge.sink_batch import build_batch
from contracts.clients import kafka_consumer, kafka_producer
from contracts.collections import DEAD_LETTERS, INDEXES, READINGS, insert_idempotent
from contracts.dead_letters import DeadLetter
from contracts.events import Reading, Source, make_event_id
from contracts.settings import Settings

pytestmark = pytest.mark.services


def readings(count: int) -> list[Reading]:
    base = time.time_ns()
    return [Reading(event_id=make_event_id("d1", "temp", base + i), device_id="d1",
                    sensor="temp", ts_ns=base + i, value=float(i), seq=i,
                    source=Source("sensors/d1/temp", "json_reading"), received_at_ns=base)
            for i in range(count)]


def produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = kafka_producer(settings)
    for value in values:
        producer.produce(topic, value, b"d1")
    assert producer.flush(20) == 0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def committed(settings: Settings, topic: str) -> int:
    consumer = kafka_consumer(settings, settings.bridge_sink_group)
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.kafka_partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


class SinkThread:
    def __init__(self, settings: Settings, db: Any) -> None:
        self.sink = RawSink(settings, kafka_consumer(settings, settings.bridge_sink_group), db)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sink.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "sink did not stop"


def test_duplicate_keys_count_as_success(mongo: Any, settings: Settings) -> None:
    collection = mongo[settings.mongo_db]["readings"]
    docs = [r.to_document() for r in readings(10)]
    assert insert_idempotent(collection, docs[:4]) == (4, 0)
    assert insert_idempotent(collection, docs) == (6, 4)
    assert collection.count_documents({}) == 10


def test_a_record_that_is_not_a_reading_becomes_a_dead_letter() -> None:
    good = readings(1)[0]
    batch = build_batch([
        Message(topic="r", partition=0, offset=7, value=good.to_json()),
        Message(topic="r", partition=0, offset=8, value=b"garbage"),
        Message(topic="dlq", partition=2, offset=3, value=DeadLetter(
            "not_json", "bad", "sensors/d/t", "sensors", "json_reading", b"x", 1).to_json()),
    ], readings_topic="r")
    assert [d["_id"] for d in batch.readings] == [good.event_id]
    assert [d["reason"] for d in batch.dead_letters] == ["bad_record", "not_json"]
    assert batch.offsets == {("r", 0): 9, ("dlq", 2): 4}


def test_sink_writes_both_topics_and_commits_after_the_write(
        services: Settings, mongo: Any) -> None:
    batch = readings(500)
    produce(services, services.kafka_topic_readings, [r.to_json() for r in batch] + [b"junk"])
    letter = DeadLetter("not_json", "bad", "sensors/d/t", "sensors", "json_reading", b"{", 5)
    produce(services, services.kafka_topic_dlq, [letter.to_json(), letter.to_json()])

    db = mongo[services.mongo_db]
    sink = SinkThread(services, db)
    try:
        wait_for(lambda: db.readings.count_documents({}) == 500
                 and db.dead_letters.count_documents({}) == 2, 30, "documents")
        wait_for(lambda: committed(services, services.kafka_topic_readings) == 501, 15,
                 "committed offsets")
    finally:
        sink.close()
    assert committed(services, services.kafka_topic_dlq) == 2
    assert sink.sink.duplicates == 1  # the same dead letter twice is one document
    for name in (READINGS, DEAD_LETTERS):
        wanted = {index.document["name"] for index in INDEXES[name]}
        assert set(db[name].index_information()) >= wanted, name
    stored = db.readings.find_one({"_id": batch[7].event_id})
    assert stored is not None and stored["seq"] == 7 and stored["ts_ns"] == batch[7].ts_ns


def test_many_batches_in_flight_are_all_written_and_committed(
        services: Settings, mongo: Any) -> None:
    settings = services.model_copy(update={"bridge_sink_batch_size": 150})
    batch = readings(2_000)
    produce(settings, settings.kafka_topic_readings, [r.to_json() for r in batch])
    db = mongo[settings.mongo_db]
    sink = SinkThread(settings, db)
    try:
        wait_for(lambda: committed(settings, settings.kafka_topic_readings) == 2_000, 60,
                 "every offset committed")
    finally:
        sink.close()
    assert db.readings.count_documents({}) == 2_000
    assert sink.sink.batches >= 2_000 // 150 and sink.sink.duplicates == 0


def test_sink_holds_its_offsets_while_mongodb_is_unreachable(
        services: Settings, mongo: Any) -> None:
    produce(services, services.kafka_topic_readings, [r.to_json() for r in readings(50)])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dead_client: MongoClient[dict[str, Any]] = MongoClient(
        f"mongodb://127.0.0.1:{closed_port}/", serverSelectionTimeoutMS=300)
    stuck = SinkThread(services, dead_client[services.mongo_db])
    try:
        wait_for(lambda: not stuck.sink.ready()[0], 20, "sink to report MongoDB down")
        assert committed(services, services.kafka_topic_readings) == 0
    finally:
        stuck.close()
        dead_client.close()

    db = mongo[services.mongo_db]
    recovered = SinkThread(services, db)  # same group: resumes from the uncommitted offsets
    try:
        wait_for(lambda: db.readings.count_documents({}) == 50, 30, "catch-up")
        assert recovered.sink.ready()[0]
    finally:
        recovered.close()
    assert committed(services, services.kafka_topic_readings) == 50
