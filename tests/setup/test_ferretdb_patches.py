"""Our two patches to FerretDB 1.24 (local_stack/ferretdb/patches), against the
real server: `{_id: {$in: [...]}}` pushed down to SQL, and inserts committed in
batches of FERRETDB_INSERT_BATCH documents. The result checks hold on any
MongoDB-wire server; the explain checks only on FerretDB, whose explain
reports its pushdown."""

import time
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from contracts.settings import Settings

Coll = Collection[dict[str, Any]]


def _is_ferretdb(client: MongoClient[dict[str, Any]]) -> bool:
    return "ferretdbVersion" in client.admin.command("buildInfo")


def _explain(coll: Coll, flt: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = coll.database.command("explain", {"find": coll.name, "filter": flt})
    return out


def _ids(coll: Coll, flt: dict[str, Any]) -> list[Any]:
    return [d["_id"] for d in coll.find(flt, {"_id": 1})]


@pytest.fixture
def coll(mongo: MongoClient[dict[str, Any]], settings: Settings) -> tuple[Coll, list[ObjectId]]:
    """300 string _ids, 20 ObjectIds and 5 integer _ids."""
    c = mongo[settings.mongo_db]["ids"]
    oids = [ObjectId() for _ in range(20)]
    c.insert_many([{"_id": f"s{i}", "v": i} for i in range(300)]
                  + [{"_id": o, "v": -1} for o in oids]
                  + [{"_id": i, "v": i} for i in range(5)])
    return c, oids


@pytest.mark.timeout(60)
def test_in_on_id_returns_exactly_the_listed_documents(
        coll: tuple[Coll, list[ObjectId]], mongo: MongoClient[dict[str, Any]]) -> None:
    c, oids = coll
    # duplicates and ids that do not exist, strings and ObjectIds mixed
    wanted = ["s0", "s17", "s17", "s299", "s300", "missing", oids[0], oids[7], oids[7],
              ObjectId()]
    got = _ids(c, {"_id": {"$in": wanted}})
    assert sorted(map(str, got)) == sorted(map(str, ["s0", "s17", "s299", oids[0], oids[7]]))
    assert len(got) == 5, f"a listed duplicate came back twice: {got}"
    assert _ids(c, {"_id": {"$in": []}}) == []
    if _is_ferretdb(mongo):
        assert _explain(c, {"_id": {"$in": wanted}})["filterPushdown"] is True
        assert _explain(c, {"_id": {"$in": []}})["filterPushdown"] is True


@pytest.mark.timeout(60)
def test_in_on_id_uses_the_id_lookup_index(coll: tuple[Coll, list[ObjectId]],
                                           mongo: MongoClient[dict[str, Any]]) -> None:
    if not _is_ferretdb(mongo):
        pytest.skip("SQLite query plans exist only on FerretDB")
    c, oids = coll
    flt = {"_id": {"$in": ["s1", oids[1]]}}
    deadline = time.monotonic() + 15  # the wrapper adds the index within ~2 s
    plan: list[str] = []
    while time.monotonic() < deadline:
        # a real query first: SQLite reloads a connection's schema (and so sees
        # the new index) only when a statement runs, which EXPLAIN alone does not
        assert len(_ids(c, flt)) == 2
        plan = _explain(c, flt)["queryPlanner"]["Plan"]
        if any("USING INDEX" in p and "__edgepipe_sjson_id" in p for p in plan):
            return
        time.sleep(0.5)
    pytest.fail(f"$in on _id does not use the _id lookup index: {plan}")


@pytest.mark.timeout(60)
def test_in_with_other_types_falls_back_and_stays_right(
        coll: tuple[Coll, list[ObjectId]], mongo: MongoClient[dict[str, Any]]) -> None:
    c, oids = coll
    # 3 == 3.0 for MongoDB: such lists must not go by the text comparison in SQL
    mixed: dict[str, Any] = {"_id": {"$in": ["s3", 3.0, None, oids[2]]}}
    assert sorted(map(str, _ids(c, mixed))) == sorted(["s3", "3", str(oids[2])])
    # more than _id in the filter, or more than $in on _id: filtered in Go as before
    both = {"_id": {"$in": ["s3", "s4", "s5"]}, "v": {"$gt": 3}}
    assert sorted(_ids(c, both)) == ["s4", "s5"]
    with_nin = {"_id": {"$in": ["s3", "s4", "s5"], "$nin": ["s4"]}}
    assert sorted(_ids(c, with_nin)) == ["s3", "s5"]
    if _is_ferretdb(mongo):
        for flt in (mixed, both, with_nin):
            assert _explain(c, flt)["filterPushdown"] is False, flt


@pytest.mark.timeout(60)
def test_in_longer_than_sqlites_variable_limit(coll: tuple[Coll, list[ObjectId]],
                                               mongo: MongoClient[dict[str, Any]]) -> None:
    c, oids = coll
    # 40,000 > 32,766 variables SQLite allows per statement: one JSON argument instead
    many: list[Any] = [f"s{i}" for i in range(0, 40_000, 2)] + [f"x{i}" for i in range(20_000)]
    many.append(oids[5])
    got = _ids(c, {"_id": {"$in": many}})
    assert sorted(map(str, got)) == sorted([f"s{i}" for i in range(0, 300, 2)] + [str(oids[5])])
    if _is_ferretdb(mongo):
        assert _explain(c, {"_id": {"$in": many}})["filterPushdown"] is True


@pytest.mark.timeout(60)
def test_in_on_id_in_count_update_and_delete(coll: tuple[Coll, list[ObjectId]]) -> None:
    c, oids = coll
    ids: list[Any] = ["s10", "s11", "nope", oids[3]]
    assert c.count_documents({"_id": {"$in": ids}}) == 3
    assert c.update_many({"_id": {"$in": ids}}, {"$set": {"hit": True}}).modified_count == 3
    assert sorted(map(str, _ids(c, {"hit": True}))) == sorted(["s10", "s11", str(oids[3])])
    assert c.delete_many({"_id": {"$in": ids}}).deleted_count == 3
    assert c.count_documents({}) == 325 - 3
