"""The dead-letter record: round trips, the stable id, and oversized payloads."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from contracts.dead_letters import MAX_STORED_PAYLOAD_BYTES, DeadLetter
from contracts.errors import SchemaError
from contracts.settings import Settings

PAYLOAD = b'{"ts": "yesterday", "value": \xff}'


def letter(payload: bytes = PAYLOAD, topic: str = "sensors/dev-1/temp",
           received_at_ns: int = 1714564800123456789) -> DeadLetter:
    return DeadLetter(reason="not_utf8", message="payload is not valid UTF-8", topic=topic,
                      route="sensors", codec="json_reading", payload=payload,
                      received_at_ns=received_at_ns)


def test_json_round_trip_keeps_the_raw_bytes() -> None:
    original = letter()
    data = orjson.loads(original.to_json())
    assert base64.b64decode(data["payload_b64"]) == PAYLOAD
    assert data["reason"] == "not_utf8"
    assert data["topic"] == "sensors/dev-1/temp"
    assert data["route"] == "sensors"
    assert data["received_at"] == "2024-05-01T12:00:00.123Z"
    assert data["payload_size"] == len(PAYLOAD) and data["payload_truncated"] is False
    assert DeadLetter.from_json(original.to_json()) == original


def test_document_round_trip_and_id() -> None:
    original = letter()
    document = original.to_document()
    assert document["_id"] == original.id
    assert "id" not in document
    assert document["received_at"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert document["payload_preview"].startswith('{"ts": "yesterday"')
    assert DeadLetter.from_dict(document) == original


def test_redelivered_bytes_keep_one_id() -> None:
    # An MQTT redelivery arrives later, with the same topic and bytes: one document.
    assert letter(received_at_ns=1).id == letter(received_at_ns=2).id
    assert letter().id != letter(payload=PAYLOAD + b" ").id
    assert letter().id != letter(topic="sensors/dev-2/temp").id


def test_routeless_letter() -> None:
    routeless = DeadLetter(reason="no_route", message="no route", topic="nowhere", route=None,
                           codec=None, payload=b"", received_at_ns=0)
    assert DeadLetter.from_json(routeless.to_json()) == routeless


def test_oversized_payloads_are_cut_but_keep_their_id_and_size() -> None:
    big = letter(payload=b"x" * (MAX_STORED_PAYLOAD_BYTES + 10))
    data = orjson.loads(big.to_json())
    assert len(base64.b64decode(data["payload_b64"])) == MAX_STORED_PAYLOAD_BYTES
    assert data["payload_truncated"] is True
    assert data["payload_size"] == MAX_STORED_PAYLOAD_BYTES + 10
    stored = DeadLetter.from_json(big.to_json())
    assert stored.id == big.id
    assert stored.to_document()["_id"] == big.id
    assert stored.to_document()["payload_size"] == MAX_STORED_PAYLOAD_BYTES + 10


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"reason": "x"}',
                                   b'{"reason": "r", "message": "m", "topic": "t", '
                                   b'"payload_b64": "***", "received_at_ns": 1}'])
def test_malformed_records_raise_schema_error(value: bytes) -> None:
    with pytest.raises(SchemaError):
        DeadLetter.from_json(value)


def test_a_redelivered_dead_letter_is_one_document_in_mongodb(
        mongo: MongoClient[dict[str, Any]], settings: Settings) -> None:
    collection = mongo[settings.mongo_db]["dead_letters"]
    first, redelivered = letter(received_at_ns=1), letter(received_at_ns=2)
    collection.insert_one(first.to_document())
    with pytest.raises(DuplicateKeyError):
        collection.insert_one(redelivered.to_document())
    stored = collection.find_one({"_id": first.id})
    assert stored is not None
    assert collection.count_documents({}) == 1
    assert DeadLetter.from_dict(stored) == first
