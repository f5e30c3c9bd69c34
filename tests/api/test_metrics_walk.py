"""The window plan's shape: the pure walk names every document an ordinary
range needs in its first pass (one `_id $in` round), falls back exactly when
documents lack children, and the reader on the real MongoDB-wire server asks
only for the documents its cache of final windows does not hold."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api.metrics_plan import MISSING, SeriesRef, WindowCache
from api.metrics_store import WindowReader, WindowSource
from api.metrics_walk import Walk, WindowKey
from contracts.clients import async_mongo_client
from contracts.events import NS_PER_S, Reading
from contracts.windows import CHILDREN, Moments

from .conftest import Store, make_reading, windows_for

T0 = 1_763_769_600 * NS_PER_S  # 2025-11-22 00:00:00 UTC
DAY_SIZES = (10, 60, 3600, 21600, 86400)
GRACE_NS = 2 * NS_PER_S
LATENESS_NS = 60 * NS_PER_S


def scalar_readings(seed: int, n: int, span_s: int) -> list[Reading]:
    rng = random.Random(seed)
    return [make_reading(rng.choice(["p", "q"]), "s", T0 + rng.randrange(span_s * NS_PER_S),
                         value=rng.uniform(-100, 100)) for _ in range(n)]


def refs_for(readings: list[Reading], last_ts_ns: int) -> list[SeriesRef]:
    return [SeriesRef(d, "s", "value", last_ts_ns) for d in sorted({r.device_id
                                                                    for r in readings})]


def walk_until_known(docs: dict[str, dict[str, Any]], refs: list[SeriesRef], lo: int,
                     hi: int) -> tuple[Walk, int]:
    """Walk, fetch what it wants from `docs` (by `_id`, MISSING where absent),
    walk again, as the reader does; also how many fetch rounds it took."""
    fetched: dict[WindowKey, dict[str, Any]] = {}
    rounds = 0
    while True:
        walk = Walk(list(DAY_SIZES), GRACE_NS, LATENESS_NS, fetched.get).run(refs, lo, hi)
        if not walk.wanted:
            return walk, rounds
        rounds += 1
        assert rounds <= len(DAY_SIZES) + 1, "more rounds than levels to fall back"
        assert not set(walk.wanted) & set(fetched), "asked again for a fetched document"
        for key in walk.wanted:
            fetched[key] = docs.get(key[0], MISSING)


def answer(walk: Walk, readings: list[Reading]) -> Moments:
    """The walk's moments plus the raw readings of the parts it left to them."""
    moments = Moments()
    moments.merge(walk.moments)
    for r in readings:
        if any(d == r.device_id and lo <= r.ts_ns < hi for d, lo, hi in walk.raw):
            assert r.value is not None
            moments.add(r.value)
    return moments


def assert_matches(got: Moments, readings: list[Reading], lo: int, hi: int) -> None:
    values = [r.value for r in readings if lo <= r.ts_ns < hi and r.value is not None]
    assert got.count == len(values)
    if values:
        assert got.min == min(values) and got.max == max(values)
        assert math.isclose(got.mean, math.fsum(values) / len(values), rel_tol=1e-9,
                            abs_tol=1e-9)


spans = st.tuples(st.integers(0, 3 * 86400), st.integers(0, 2 * 86400),
                  st.integers(0, NS_PER_S - 1), st.integers(0, 3 * 86400))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), span=spans)
def test_an_ordinary_range_is_one_round_and_exact(seed: int,
                                                  span: tuple[int, int, int, int]) -> None:
    """Every document present with its children and points: the first walk
    names all the plan needs, so one fetch round, whatever is still open."""
    lo_s, length_s, lo_ns, closed_s = span
    readings = scalar_readings(seed, 300, 3 * 86400)
    closed = T0 + closed_s * NS_PER_S
    docs = {w.id: w.to_document()
            for w in windows_for(readings, DAY_SIZES, closed, points_max=10**6)}
    lo = T0 + lo_s * NS_PER_S + lo_ns
    hi = lo + length_s * NS_PER_S
    walk, rounds = walk_until_known(docs, refs_for(readings, closed + GRACE_NS), lo, hi)
    assert rounds <= 1
    assert_matches(answer(walk, readings), readings, lo, hi)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), span=spans, drop=st.sampled_from([60, 3600, 21600, 86400]))
def test_documents_without_children_cost_rounds_not_exactness(
        seed: int, span: tuple[int, int, int, int], drop: int) -> None:
    """Windows of one size written without children (a worker restart) make the
    walk fall back to the smaller size in a later round; the answer is the same."""
    lo_s, length_s, lo_ns, closed_s = span
    readings = scalar_readings(seed, 300, 3 * 86400)
    closed = T0 + closed_s * NS_PER_S
    docs = {}
    for w in windows_for(readings, DAY_SIZES, closed):
        doc = w.to_document()
        if w.size_s == drop:
            doc.pop(CHILDREN, None)
        docs[w.id] = doc
    lo = T0 + lo_s * NS_PER_S + lo_ns
    hi = lo + length_s * NS_PER_S
    walk, _ = walk_until_known(docs, refs_for(readings, closed + GRACE_NS), lo, hi)
    assert_matches(answer(walk, readings), readings, lo, hi)


def test_reader_asks_only_for_documents_not_cached(store: Store) -> None:
    """On the real server: a range, then one overlapping it. The second asks
    in one round for exactly the documents the cache of final windows lacks."""
    readings = scalar_readings(5, 2000, 3 * 86400)
    last = T0 + 4 * 86400 * NS_PER_S  # every window closed and final
    store.db.windows.insert_many([w.to_document() for w in windows_for(readings, DAY_SIZES)])
    refs = refs_for(readings, last)
    source = WindowSource(list(DAY_SIZES), GRACE_NS, LATENESS_NS, WindowCache(10_000))
    first = (T0 + 3 * 3600 * NS_PER_S + 7, T0 + 50 * 3600 * NS_PER_S + 123_456_789)
    second = (T0 + 20 * 3600 * NS_PER_S + 11, T0 + 60 * 3600 * NS_PER_S + 5)

    async def run() -> None:
        client = async_mongo_client(store.settings)
        try:
            reader = WindowReader(client[store.settings.mongo_db], source)
            moments, raw = await reader.moments(refs, *first)
            assert raw == [] and (reader.rounds, reader.finds) == (1, 2)  # whole day, cut ones
            assert_matches(moments, readings, *first)
            cached = len(source.cache)
            assert cached == reader.documents > 0
            uncached = Walk(list(DAY_SIZES), GRACE_NS, LATENESS_NS,
                            source.cache.get).run(refs, *second).wanted
            every = Walk(list(DAY_SIZES), GRACE_NS, LATENESS_NS,
                         lambda _: None).run(refs, *second).wanted
            assert 0 < len(uncached) < len(every)  # partly cached
            reader = WindowReader(client[store.settings.mongo_db], source)
            moments, raw = await reader.moments(refs, *second)
            assert raw == [] and reader.rounds == 1 and reader.documents == len(uncached)
            assert_matches(moments, readings, *second)
            assert len(source.cache) == cached + len(uncached)
        finally:
            await client.close()

    asyncio.run(run())
