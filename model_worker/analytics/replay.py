"""Re-reading `readings` from Kafka after a restart: the analytics state saved
at the last checkpoint may be behind the offsets the loop committed since (the
loop commits every batch, analytics checkpoints every few seconds). The
readings in between are read again here, on a consumer of our own assigned to
the partition (it joins no group and commits nothing), and applied before the
batch that follows them, so the state is as if the stage had never stopped."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from contracts.errors import ServiceUnavailable
from model_worker.scoring import KafkaRecord, decode_records
from model_worker.stage import ConsumedBatch

READ_TIMEOUT_S = 60.0
COMMITTED_TIMEOUT_S = 10.0


def committed_offsets(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, int]:
    """The offsets the consumer's group (the worker's own, which this consumer
    reads without joining) has committed on these partitions; none: absent."""
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                   timeout=COMMITTED_TIMEOUT_S)
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka committed offsets of {topic}: {exc}") from exc
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


def read_range(consumer: Consumer, topic: str, partition: int, start: int, end: int,
               score_fields: Mapping[str, str], chunk: int) -> Iterator[ConsumedBatch]:
    """Batches of the readings at offsets [start, end) of one partition, decoded
    as the loop decodes them (what it dead-lettered is skipped here too)."""
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        position = start
        deadline = time.monotonic() + READ_TIMEOUT_S
        while position < end:
            records: list[KafkaRecord] = []
            for message in consumer.consume(num_messages=min(chunk, end - position), timeout=1.0):
                error = message.error()
                if error is not None:
                    raise ServiceUnavailable(f"Kafka re-read of {topic}[{partition}]: {error}")
                offset = message.offset() or 0
                if offset >= end:
                    position = end
                    break
                records.append(KafkaRecord(message.value(), partition, offset))
                position = offset + 1
            if not records:
                # Offsets without records (transaction markers, compaction) end a range too.
                (now_at,) = consumer.position([TopicPartition(topic, partition)])
                position = max(position, now_at.offset)
                if position < end and time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"Kafka re-read of {topic}[{partition}] stuck at {position} < {end}")
                continue
            deadline = time.monotonic() + READ_TIMEOUT_S
            batch, _ = decode_records(topic, records, score_fields)
            if batch.readings:
                yield batch
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka re-read of {topic}[{partition}]: {exc}") from exc
    finally:
        with contextlib.suppress(KafkaException):  # the next assign replaces it anyway
            consumer.unassign()
