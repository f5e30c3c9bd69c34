"""The MongoDB collections of edgepipe and the indexes every service relies
on, defined once: two services creating the same keys under different names
would make the second one fail (IndexOptionsConflict)."""

from collections.abc import Iterable
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

READINGS = "readings"
ANALYTICS = "analytics"
WINDOWS = "windows"
STATS = "stats"
DEAD_LETTERS = "dead_letters"
DUPLICATE_KEY = 11000
# FerretDB 1.24 hangs on one bulk_write of 100 or more upserts when some of them
# match existing documents; 99 per command works.
UPSERT_CHUNK = 99

# What the sinks look up and the API filters and sorts on. Names are pymongo's
# defaults, so creating an existing index is a no-op from any service.
INDEXES: dict[str, list[IndexModel]] = {
    READINGS: [
        IndexModel([("device_id", ASCENDING), ("sensor", ASCENDING), ("ts", ASCENDING)]),
        IndexModel([("sensor", ASCENDING), ("ts", ASCENDING)]),
        IndexModel([("ts", ASCENDING), ("_id", ASCENDING)]),
    ],
    ANALYTICS: [
        IndexModel([("device_id", ASCENDING), ("sensor", ASCENDING), ("ts", ASCENDING)]),
        IndexModel([("ts", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("scored_at", ASCENDING), ("_id", ASCENDING)]),
    ],
    WINDOWS: [
        IndexModel([("device_id", ASCENDING), ("sensor", ASCENDING), ("size_s", ASCENDING),
                    ("start_ns", DESCENDING)]),
        IndexModel([("sensor", ASCENDING), ("size_s", ASCENDING), ("start_ns", DESCENDING)]),
        IndexModel([("start", ASCENDING), ("_id", ASCENDING)]),
    ],
    DEAD_LETTERS: [
        IndexModel([("reason", ASCENDING), ("received_at", DESCENDING)]),
        IndexModel([("received_at", DESCENDING)]),
    ],
}


# One index per command: FerretDB 1.24 panics and drops the connection
# ("slice bounds out of range") when one createIndexes command names several
# indexes that already exist, which is every start after the first.
def ensure_indexes(db: Database[dict[str, Any]], collections: Iterable[str]) -> None:
    for name in collections:
        for index in INDEXES[name]:
            db[name].create_indexes([index])


async def ensure_indexes_async(db: AsyncDatabase[dict[str, Any]],
                               collections: Iterable[str]) -> None:
    for name in collections:
        for index in INDEXES[name]:
            await db[name].create_indexes([index])


def insert_idempotent(collection: Collection[dict[str, Any]],
                      docs: list[dict[str, Any]]) -> tuple[int, int]:
    """insert_many(ordered=False) where an existing `_id` means "already written"
    (a replay). Returns (inserted, duplicates); any other write error is raised."""
    if not docs:
        return 0, 0
    try:
        result = collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if exc.details.get("writeConcernErrors") or any(
                e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return exc.details.get("nInserted", len(docs) - len(errors)), len(errors)
    return len(result.inserted_ids), 0


def replace_upsert(collection: Collection[dict[str, Any]], docs: list[dict[str, Any]]) -> None:
    """Replace each document by `_id`, inserting it when absent."""
    for start in range(0, len(docs), UPSERT_CHUNK):
        collection.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True)
                               for d in docs[start:start + UPSERT_CHUNK]], ordered=False)


def insert_or_replace(collection: Collection[dict[str, Any]], docs: list[dict[str, Any]]) -> int:
    """Insert the documents in one batch; those whose `_id` exists already are
    replaced (a replay may bring newer content under an existing id). The
    common case, all new, costs one insert command. Returns how many were replaced."""
    if not docs:
        return 0
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if exc.details.get("writeConcernErrors") or any(
                e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        existing = [docs[e["index"]] for e in errors]
        replace_upsert(collection, existing)
        return len(existing)
    return 0
