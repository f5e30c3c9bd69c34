"""Our FerretDB patch 4 (local_stack/ferretdb/patches/internal/handler/
edgepipe_replace.go), against the real server: a bulk of replacements by
string or ObjectId `_id` runs as one query and two batch writes. Every check
is MongoDB's own behaviour, so they hold on a genuine mongod too; the upserted
indexes are the one place upstream FerretDB differs (it numbers upserts 0, 1,
... instead of by statement), which is how these tests see the batch ran."""

from typing import Any

import pytest
from bson import SON, ObjectId
from pymongo import MongoClient, ReplaceOne, UpdateOne
from pymongo.collection import Collection

from contracts.settings import Settings

Coll = Collection[dict[str, Any]]
IMMUTABLE_FIELD = 66


@pytest.fixture
def coll(mongo: MongoClient[dict[str, Any]], settings: Settings) -> Coll:
    c = mongo[settings.mongo_db]["replace"]
    c.insert_many([{"_id": f"a{i}", "v": i, "old": True} for i in range(10)])
    return c


def _all(c: Coll) -> dict[Any, dict[str, Any]]:
    return {d["_id"]: d for d in c.find()}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False])
def test_bulk_replacements_store_and_report_what_one_by_one_would(coll: Coll,
                                                                  ordered: bool) -> None:
    oid = ObjectId()
    result = coll.bulk_write([
        ReplaceOne({"_id": "a1"}, {"v": 100, "new": "x"}, upsert=True),  # changed
        ReplaceOne({"_id": "a2"}, {"v": 2, "old": True}, upsert=True),  # same content
        ReplaceOne({"_id": "n1"}, {"v": -1}, upsert=True),  # new, upserted
        ReplaceOne({"_id": "n2"}, {"v": -2}),  # new, no upsert: nothing
        ReplaceOne({"_id": "a3"}, {"_id": "a3", "w": [1, {"k": 2}]}),  # own equal _id
        ReplaceOne({"_id": oid}, {"v": "oid"}, upsert=True),  # ObjectId, new
    ], ordered=ordered)
    docs = _all(coll)
    assert list(docs["a1"].items()) == [("_id", "a1"), ("v", 100), ("new", "x")]
    assert docs["a2"] == {"_id": "a2", "v": 2, "old": True}
    assert list(docs["n1"].items()) == [("_id", "n1"), ("v", -1)]
    assert "n2" not in docs
    assert docs["a3"] == {"_id": "a3", "w": [1, {"k": 2}]}
    assert docs[oid] == {"_id": oid, "v": "oid"}
    assert len(docs) == 12
    # MongoDB: matched a1, a2, a3; modified a1, a3 (a2 was identical); the
    # upserts keyed by their statement's index.
    assert (result.matched_count, result.modified_count) == (3, 2)
    assert result.upserted_ids == {2: "n1", 5: oid}


@pytest.mark.timeout(60)
def test_a_large_bulk_of_new_then_existing_documents(coll: Coll) -> None:
    ids = [f"b{i}" for i in range(99)]
    first = coll.bulk_write([ReplaceOne({"_id": i}, {"n": 1, "i": i}, upsert=True)
                             for i in ids], ordered=False)
    second = coll.bulk_write([ReplaceOne({"_id": i}, {"n": 2, "i": i}, upsert=True)
                              for i in ids], ordered=False)
    assert first.upserted_ids == dict(enumerate(ids))
    assert (second.matched_count, second.modified_count, second.upserted_ids) == (99, 99, {})
    assert sorted(d["_id"] for d in coll.find({"n": 2})) == sorted(ids)
    assert coll.count_documents({}) == 109


@pytest.mark.timeout(60)
def test_the_same_id_twice_in_one_bulk_applies_in_order(coll: Coll) -> None:
    coll.bulk_write([ReplaceOne({"_id": "a1"}, {"v": "first"}),
                     ReplaceOne({"_id": "a1"}, {"v": "second"}),
                     ReplaceOne({"_id": "z"}, {"v": "z1"}, upsert=True),
                     ReplaceOne({"_id": "z"}, {"v": "z2"}, upsert=True)])
    docs = _all(coll)
    assert (docs["a1"]["v"], docs["z"]["v"]) == ("second", "z2")


@pytest.mark.timeout(60)
def test_a_replacement_that_changes_the_id_is_refused(coll: Coll) -> None:
    # as a raw command: upstream's error reply lacks nModified, which pymongo's
    # bulk_write needs
    reply = coll.database.command(SON([("update", coll.name), ("updates", [
        {"q": {"_id": "a1"}, "u": {"_id": "other", "v": 1}},
        {"q": {"_id": "a2"}, "u": {"v": 2}}])]), check=False)
    assert [e["code"] for e in reply["writeErrors"]] == [IMMUTABLE_FIELD], reply
    docs = _all(coll)
    assert docs["a1"] == {"_id": "a1", "v": 1, "old": True}
    assert "other" not in docs


@pytest.mark.timeout(60)
def test_bulks_the_batch_does_not_serve_still_work(coll: Coll) -> None:
    # operator updates, and integer _ids (kept on upstream's path)
    coll.bulk_write([UpdateOne({"_id": "a1"}, {"$set": {"v": "set"}}),
                     ReplaceOne({"_id": "a2"}, {"v": "replaced"})])
    coll.bulk_write([ReplaceOne({"_id": 1}, {"v": 1}, upsert=True),
                     ReplaceOne({"_id": 2}, {"v": 2}, upsert=True)])
    docs = _all(coll)
    assert docs["a1"] == {"_id": "a1", "v": "set", "old": True}
    assert docs["a2"] == {"_id": "a2", "v": "replaced"}
    assert (docs[1]["v"], docs[2]["v"]) == (1, 2)
