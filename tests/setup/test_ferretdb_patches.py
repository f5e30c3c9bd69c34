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
from pymongo.errors import BulkWriteError

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
def test_in_on_id_with_characters_json_escapes(mongo: MongoClient[dict[str, Any]],
                                               settings: Settings) -> None:
    # the SQL compares JSON texts: Go escapes <, > and & where SQLite might not
    c = mongo[settings.mongo_db]["escapes"]
    ids = ["a<b&c>", "é ü 中", 'q"x', "back\\slash", "tab\there", "line\u2028sep", "emoji 😀"]
    c.insert_many([{"_id": i} for i in ids] + [{"_id": "other"}])
    assert sorted(_ids(c, {"_id": {"$in": ids}})) == sorted(ids)


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


def _write_errors(exc: BulkWriteError) -> tuple[int, list[int], set[int]]:
    details = exc.details
    return (details["nInserted"], [e["index"] for e in details["writeErrors"]],
            {e["code"] for e in details["writeErrors"]})


@pytest.mark.timeout(120)
def test_unordered_batch_insert_reports_duplicates_at_their_indexes(
        mongo: MongoClient[dict[str, Any]], settings: Settings) -> None:
    c = mongo[settings.mongo_db]["batch"]
    # already stored: hit at batch boundaries (999/1000/1001 for batches of 1000,
    # 99/100 for FerretDB's former 100) and at the ends
    c.insert_many([{"_id": f"d{i}"} for i in (0, 99, 100, 999, 1000, 1001, 2500, 4999)])
    docs = [{"_id": f"d{i}", "n": i} for i in range(5000)]
    # duplicates inside the one command: the second copy is the one refused
    for i, j in ((1500, 7), (3000, 2999), (4998, 4000)):
        docs[i] = {"_id": f"d{j}", "n": i}
    with pytest.raises(BulkWriteError) as err:
        c.insert_many(docs, ordered=False)
    inserted, indexes, codes = _write_errors(err.value)
    expected = [0, 99, 100, 999, 1000, 1001, 1500, 2500, 3000, 4998, 4999]
    assert indexes == expected
    assert codes == {11000}
    assert inserted == 5000 - len(expected)
    assert c.count_documents({}) == 8 + inserted
    stored = {d["_id"]: d.get("n") for d in c.find({}, {"n": 1})}
    assert stored["d7"] == 7 and stored["d2999"] == 2999 and stored["d4000"] == 4000
    assert stored["d0"] is None and "d1500" not in stored


@pytest.mark.timeout(120)
@pytest.mark.parametrize("first_dup", [0, 2500, 2573])
def test_ordered_batch_insert_stops_at_the_first_duplicate(
        mongo: MongoClient[dict[str, Any]], settings: Settings, first_dup: int) -> None:
    c = mongo[settings.mongo_db]["ordered"]
    c.insert_many([{"_id": f"o{first_dup}"}, {"_id": "o4000"}])
    with pytest.raises(BulkWriteError) as err:
        c.insert_many([{"_id": f"o{i}"} for i in range(5000)], ordered=True)
    inserted, indexes, codes = _write_errors(err.value)
    # FerretDB 1.24 itself went on with the next batch after the failed one
    assert (inserted, indexes, codes) == (first_dup, [first_dup], {11000})
    assert c.count_documents({}) == first_dup + 2
    assert c.find_one({"_id": f"o{first_dup + 1}"}) is None


@pytest.mark.timeout(120)
def test_batch_insert_without_errors_stores_every_document(
        mongo: MongoClient[dict[str, Any]], settings: Settings) -> None:
    c = mongo[settings.mongo_db]["clean"]
    result = c.insert_many([{"_id": i, "v": i} for i in range(5000)], ordered=False)
    assert len(result.inserted_ids) == 5000
    assert c.count_documents({}) == 5000
    assert c.find_one({"_id": 4999}) == {"_id": 4999, "v": 4999}
