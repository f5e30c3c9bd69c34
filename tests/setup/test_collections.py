"""The shared MongoDB helpers against the real MongoDB-wire server, including
the two FerretDB 1.24 traps they route around."""

from typing import Any

import pytest
from pymongo import MongoClient

from contracts.collections import (
    DEAD_LETTERS,
    INDEXES,
    READINGS,
    ensure_indexes,
    insert_idempotent,
    replace_upsert,
)
from contracts.settings import Settings


@pytest.mark.timeout(60)
def test_ensure_indexes_twice_keeps_the_connection(mongo: MongoClient[dict[str, Any]],
                                                   settings: Settings) -> None:
    db = mongo[settings.mongo_db]
    ensure_indexes(db, (READINGS, DEAD_LETTERS))
    ensure_indexes(db, (READINGS, DEAD_LETTERS))  # several existing ones: FerretDB panicked
    for name in (READINGS, DEAD_LETTERS):
        wanted = {index.document["name"] for index in INDEXES[name]}
        assert set(db[name].index_information()) >= wanted
    assert db.command("ping")["ok"] == 1


@pytest.mark.timeout(60)
def test_insert_idempotent_counts_replays_as_duplicates(mongo: MongoClient[dict[str, Any]],
                                                        settings: Settings) -> None:
    coll = mongo[settings.mongo_db]["idempotent"]
    docs = [{"_id": f"e{i}", "v": i} for i in range(10)]
    assert insert_idempotent(coll, docs[:4]) == (4, 0)
    assert insert_idempotent(coll, docs) == (6, 4)
    assert insert_idempotent(coll, []) == (0, 0)
    assert coll.count_documents({}) == 10


@pytest.mark.timeout(60)
def test_replace_upsert_of_many_existing_documents_does_not_hang(
        mongo: MongoClient[dict[str, Any]], settings: Settings) -> None:
    coll = mongo[settings.mongo_db]["upserts"]
    replace_upsert(coll, [{"_id": f"s{i}", "n": 1} for i in range(150)])
    # 250 upserts, 150 of them matching: one command of this size hangs FerretDB 1.24.
    replace_upsert(coll, [{"_id": f"s{i}", "n": 2} for i in range(250)])
    assert coll.count_documents({}) == 250
    assert coll.count_documents({"n": 2}) == 250
