"""Opaque cursors over (time, _id): stable under inserts, no skip/offset scans."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

import orjson

from contracts.errors import SchemaError
from contracts.events import EPOCH, datetime_to_ns, ns_to_datetime

NS_PER_MS = 1_000_000


def encode_cursor(moment: datetime, doc_id: str) -> str:
    raw = orjson.dumps([datetime_to_ns(moment) // NS_PER_MS, doc_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ms, doc_id = orjson.loads(raw)
        if not isinstance(ms, int) or not isinstance(doc_id, str):
            raise ValueError("wrong cursor shape")
    except (binascii.Error, ValueError, TypeError) as exc:
        raise SchemaError("cursor is not one this API handed out") from exc
    return ns_to_datetime(ms * NS_PER_MS), doc_id


def after_cursor(time_field: str, cursor: str | None) -> dict[str, Any]:
    """Filter for documents strictly after the cursor in (time, _id) order."""
    if cursor is None:
        return {}
    moment, doc_id = decode_cursor(cursor)
    return {"$or": [{time_field: {"$gt": moment}},
                    {time_field: moment, "_id": {"$gt": doc_id}}]}


def time_range(time_field: str, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if start is not None:
        bounds["$gte"] = start
    if end is not None:
        bounds["$lt"] = end
    return {time_field: bounds} if bounds else {}


def as_utc(moment: datetime) -> datetime:
    """Documents read without tz_aware come back naive; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=EPOCH.tzinfo)
