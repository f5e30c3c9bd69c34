"""The worker's writes: Kafka (inside the loop's transaction), MongoDB (bulk,
keyed by id, duplicates are success) and MQTT (QoS 1, waiting for every
PUBACK). Each raises ServiceUnavailable when the write is not done, so the
loop aborts and the batch comes again."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from confluent_kafka import KafkaException, Producer
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from contracts.collections import insert_idempotent
from contracts.errors import ServiceUnavailable
from contracts.events import ns_to_datetime
from contracts.mqtt_publish import PublishInfo, publish_many
from model_worker.scoring import DeadLetter


def produce_all(producer: Producer, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Queue (key, value) records; delivery is confirmed by the transaction commit,
    which fails if any of them was not delivered."""
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:  # local queue full: let librdkafka drain it
                producer.poll(0.05)
            except KafkaException as exc:
                raise ServiceUnavailable(f"Kafka produce to {topic}: {exc}") from exc
    producer.poll(0)


def write_documents(collection: Collection[dict[str, Any]],
                    documents: list[dict[str, Any]]) -> None:
    """Idempotent insert; any MongoDB failure leaves the batch uncommitted."""
    try:
        insert_idempotent(collection, documents)
    except PyMongoError as exc:
        raise ServiceUnavailable(f"MongoDB {collection.full_name}: {exc!s:.300}") from exc


def publish_all(client: mqtt.Client, messages: Sequence[tuple[str, bytes]],
                timeout_s: float) -> list[tuple[str, str]]:
    """Publish at QoS 1, retained (so a new subscriber sees the latest result at
    once), and wait until the broker acknowledged every message. Returns the
    (topic, reason) of messages the broker refused (an ACL, say), which a retry
    would not change: not raised (the client logs them, contracts.mqtt_publish)."""
    infos = publish_many(client, messages, qos=1, retain=True)
    deadline = time.monotonic() + timeout_s
    for info in infos:
        remaining = deadline - time.monotonic()
        try:
            info.wait_for_publish(timeout=max(remaining, 0.001))
        except (RuntimeError, ValueError) as exc:
            raise ServiceUnavailable(f"MQTT publish failed: {exc}") from exc
        if not info.is_published():
            raise ServiceUnavailable(
                f"MQTT broker did not acknowledge {len(messages)} results in {timeout_s:.0f}s")
    return refusals(messages, infos)


def refusals(messages: Sequence[tuple[str, bytes]],
             infos: Sequence[mqtt.MQTTMessageInfo]) -> list[tuple[str, str]]:
    """(topic, reason) of each message the broker acknowledged with a refusal."""
    return [(topic, str(info.reason_code))
            for (topic, _), info in zip(messages, infos, strict=True)
            if isinstance(info, PublishInfo) and info.reason_code is not None]


def dead_letter_document(letter: DeadLetter, topic: str, now_ns: int) -> dict[str, Any]:
    record = letter.record
    return {
        "_id": f"model_worker:{topic}:{record.partition}:{record.offset}",
        "service": "model_worker",
        "reason": letter.reason,
        "message": letter.error,
        "topic": topic,
        "partition": record.partition,
        "offset": record.offset,
        "payload": None if record.value is None else record.value.decode("utf-8", "replace"),
        "received_at": ns_to_datetime(now_ns),
    }


def dead_letter_json(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, default=str)
