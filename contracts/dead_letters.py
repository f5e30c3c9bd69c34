"""The dead-letter record: input the bridge could not turn into readings, kept
with its raw bytes so nothing is lost and a fixed codec can replay it.

It travels as JSON on Kafka `readings.dlq` and lands in MongoDB
`iot.dead_letters`. Its id hashes the topic and the payload only, not the
arrival time: an MQTT redelivery of the same bad bytes (after a bridge restart
before its PUBACK) arrives later but is the same dead letter, so it stays one
document. The cost is that a device sending the very same bad bytes twice on
purpose is also stored once; for input that could not be read at all, that
loses nothing a replay would recover.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from contracts.errors import SchemaError
from contracts.events import ns_to_datetime, ns_to_iso

# Kafka's default message limit is 1 MB and base64 grows bytes by a third: beyond
# this the stored payload is cut (and flagged); the id still hashes all of it.
MAX_STORED_PAYLOAD_BYTES = 512 * 1024
PREVIEW_CHARS = 200


def dead_letter_id(topic: str, payload: bytes) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(topic.encode("utf-8", "surrogateescape"))
    digest.update(b"\x00")
    digest.update(payload)
    return digest.hexdigest()


@dataclass(slots=True, frozen=True)
class DeadLetter:
    reason: str
    message: str
    topic: str  # MQTT topic, HTTP path, or "kafka:<topic>"
    route: str | None
    codec: str | None
    payload: bytes
    received_at_ns: int
    payload_size: int | None = None  # the original size when `payload` was cut
    original_id: str | None = None  # the id of the uncut payload, when `payload` was cut

    @property
    def id(self) -> str:
        return self.original_id or dead_letter_id(self.topic, self.payload)

    def to_dict(self) -> dict[str, Any]:
        stored = self.payload[:MAX_STORED_PAYLOAD_BYTES]
        size = self.payload_size if self.payload_size is not None else len(self.payload)
        return {
            "id": self.id,
            "reason": self.reason,
            "message": self.message,
            "topic": self.topic,
            "route": self.route,
            "codec": self.codec,
            "payload_b64": base64.b64encode(stored).decode("ascii"),
            "payload_size": size,
            "payload_truncated": len(stored) < size,
            # For people browsing the collection; replay uses payload_b64.
            "payload_preview": stored[:PREVIEW_CHARS].decode("utf-8", "replace"),
            "received_at": ns_to_iso(self.received_at_ns),
            "received_at_ns": self.received_at_ns,
        }

    def to_json(self) -> bytes:
        """The Kafka `readings.dlq` value."""
        return orjson.dumps(self.to_dict())

    def to_document(self) -> dict[str, Any]:
        """The MongoDB `iot.dead_letters` document; `_id` makes redeliveries no-ops."""
        document = self.to_dict()
        document["_id"] = document.pop("id")
        document["received_at"] = ns_to_datetime(self.received_at_ns)
        return document

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetter:
        """From `to_dict`, `to_json` or `to_document` output."""
        try:
            payload = base64.b64decode(data["payload_b64"], validate=True)
            size = data.get("payload_size")
            truncated = size is not None and size != len(payload)
            route, codec = data.get("route"), data.get("codec")
            return cls(
                reason=str(data["reason"]),
                message=str(data["message"]),
                topic=str(data["topic"]),
                route=None if route is None else str(route),
                codec=None if codec is None else str(codec),
                payload=payload,
                received_at_ns=int(data["received_at_ns"]),
                payload_size=int(size) if size is not None and truncated else None,
                original_id=str(data.get("id") or data["_id"]) if truncated else None,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise SchemaError(f"not a dead letter: {exc!r}") from exc

    @classmethod
    def from_json(cls, value: bytes) -> DeadLetter:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"dead letter is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SchemaError("dead letter is not a JSON object")
        return cls.from_dict(data)
