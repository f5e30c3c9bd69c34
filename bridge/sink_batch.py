"""The raw sink's pure step: Kafka records in, the documents of one batch out
(readings, dead letters, and the offsets to commit once they are written)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge import metrics
from contracts.dead_letters import DeadLetter
from contracts.errors import SchemaError
from contracts.events import Reading

if TYPE_CHECKING:
    from confluent_kafka import Message

log = logging.getLogger("bridge.sink")

Document = dict[str, Any]


@dataclass
class Batch:
    readings: list[Document] = field(default_factory=list)
    dead_letters: list[Document] = field(default_factory=list)
    # (topic, partition) -> next offset to read, committed after the write.
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # (topic, partition) -> offset of its first record in the batch.
    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0


def reading_document(value: bytes) -> Document:
    return Reading.from_json(value).to_document()


def dead_letter_document(value: bytes) -> Document:
    return DeadLetter.from_json(value).to_document()


def build_batch(messages: list[Message], readings_topic: str) -> Batch:
    """Documents for one batch; a record that is not what its topic promises
    becomes a dead letter itself rather than blocking the partition."""
    batch = Batch()
    for msg in messages:
        if msg.error() is not None:
            log.warning("kafka consume error", extra={"error": str(msg.error())})
            continue
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            continue
        value = msg.value() or b""
        batch.records += 1
        key = (topic, partition)
        if key not in batch.offsets:
            batch.starts[key] = offset
        batch.offsets[key] = offset + 1
        try:
            if topic == readings_topic:
                batch.readings.append(reading_document(value))
            else:
                batch.dead_letters.append(dead_letter_document(value))
        except SchemaError as exc:
            metrics.SINK_BAD_RECORDS.inc()
            letter = DeadLetter(reason="bad_record", message=f"kafka {topic}: {exc}",
                                topic=f"kafka:{topic}", route=None, codec=None,
                                payload=value, received_at_ns=time.time_ns())
            batch.dead_letters.append(letter.to_document())
    return batch


def offset_jumps(next_offset: dict[tuple[str, int], int],
                 batch: Batch) -> list[tuple[tuple[str, int], int, int]]:
    """(partition, expected, got) for each partition whose records in `batch` do
    not follow on from the last ones consumed; updates `next_offset`. The
    readings topics have no transaction markers, so got > expected means a
    skipped record; got < expected is a harmless step back (records read
    again, e.g. stale records a consume() returned together with the rebalance
    that re-assigned their partition, then the fetch from the committed offset)."""
    jumps = []
    for key, start in batch.starts.items():
        expected = next_offset.get(key)
        if expected is not None and start != expected:
            jumps.append((key, expected, start))
        next_offset[key] = batch.offsets[key]
    return jumps
