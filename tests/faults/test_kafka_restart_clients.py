"""The Kafka clients our factories build, across a restart of the (single)
real broker: none of them may "re-bootstrap" (librdkafka's default since 2.10
when every known broker is down, which decommissions the broker handle and
can leave a coordinator or a partition's queue tied to the dead handle:
librdkafka issues 5456, 5511), and each must work again once the broker is
back: the bridge's idempotent producer delivers what it held, the worker's
transactional producer commits offsets in a transaction, and a consumer reads
its group's committed offsets (the analytics state load on assignment)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

from contracts.clients import call_within, kafka_consumer, kafka_producer
from contracts.settings import Settings
from tests.faults.harness import service_stopped

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Once the broker is healthy again, each client must have recovered within this.
RECOVERED_WITHIN_S = 30.0
# Long enough for every client to see the broker down (and re-bootstrap, if it would).
OUTAGE_S = 8.0


class LibrdkafkaLog(logging.Handler):
    """Keeps librdkafka's log lines (the `logger` client option)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.lines.append(record.getMessage())

    def matching(self, text: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if text in line.lower()]


def _transaction(producer: Any, consumer: Any, topic: str, out_topic: str,
                 offsets: list[TopicPartition]) -> None:
    producer.begin_transaction()
    producer.produce(out_topic, b"scored")
    producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 10)
    producer.commit_transaction(10)


def test_factory_clients_never_rebootstrap_and_work_after_a_kafka_restart(
        kafka_topics: Settings, unique: str) -> None:
    settings = kafka_topics.model_copy(update={"kafka_debug": "broker"})
    handler = LibrdkafkaLog()
    logger = logging.getLogger(f"librdkafka.{unique}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    topic, out_topic = settings.kafka_topic_readings, settings.kafka_topic_analytics

    bridge = kafka_producer(settings, logger=logger)
    txn = kafka_producer(settings, logger=logger, **{
        "transactional.id": f"restart-{unique}", "transaction.timeout.ms": 60_000,
        "message.timeout.ms": 60_000})
    consumer = kafka_consumer(settings, settings.worker_group, logger=logger)
    delivered: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        delivered.append(err)

    # Before the outage every client has a live connection and its coordinators.
    for i in range(10):
        bridge.produce(topic, b"before-%d" % i, b"k%d" % (i % 3), on_delivery=on_delivery)
    assert bridge.flush(30) == 0
    txn.init_transactions(30)
    consumer.subscribe([topic])
    consumed: list[Any] = []
    deadline = time.monotonic() + 60
    while len(consumed) < 10 and time.monotonic() < deadline:
        consumed += [m for m in consumer.consume(10, 1.0) if m.error() is None]
    assert len(consumed) == 10, "the consumer did not read the first records"
    first = [TopicPartition(topic, m.partition(), m.offset() + 1) for m in consumed[-1:]]
    _transaction(txn, consumer, topic, out_topic, first)

    with service_stopped("kafka"):
        # Held by the idempotent producer while the broker is away, as the
        # bridge holds a device's readings (their PUBACKs wait for these).
        for i in range(20):
            bridge.produce(topic, b"during-%d" % i, b"k%d" % (i % 3), on_delivery=on_delivery)
        stop_at = time.monotonic() + OUTAGE_S
        while time.monotonic() < stop_at:
            bridge.poll(0.2)
            txn.poll(0)
            consumer.consume(10, 0.2)

    back = time.monotonic()
    assert bridge.flush(RECOVERED_WITHIN_S) == 0, "the idempotent producer still holds records"
    assert delivered[10:] == [None] * 20, delivered
    # The worker's batch commit, bounded: it hung past its own timeout when its
    # coordinator stayed tied to a decommissioned broker handle.
    last: dict[int, int] = {}
    for m in consumed:
        last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
    offsets = [TopicPartition(topic, p, o + 1) for p, o in sorted(last.items())]
    call_within("transaction", lambda: _transaction(txn, consumer, topic, out_topic, offsets),
                RECOVERED_WITHIN_S)
    committed = call_within("committed", lambda: consumer.committed(
        [TopicPartition(topic, p) for p in range(settings.kafka_partitions)], timeout=10),
        RECOVERED_WITHIN_S)
    assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == {
        tp.partition: tp.offset for tp in offsets}
    recovered_s = time.monotonic() - back
    print(f"clients recovered {recovered_s:.1f} s after the broker was healthy again")
    for client in (bridge, txn):
        client.poll(0)  # serve the last log lines
    consumer.close()
    assert handler.lines, "no librdkafka log captured: the test would prove nothing"
    assert not handler.matching("re-bootstrap"), handler.matching("re-bootstrap")[:3]
