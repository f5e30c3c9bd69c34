"""`POST /compute/metrics` against MongoDB: closed windows and, at the range
edges, their children's moments and the smallest windows' readings, all
fetched by `_id` and merged exactly; raw readings only where no closed window
can answer (see `api.metrics_plan` for why everything goes by `_id`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.metrics_logic import MetricsRequest, Series, metric_values, reading_value
from api.metrics_plan import MISSING, SeriesRef, WindowCache, choose_series, stats_ids
from api.metrics_walk import Walk, WindowKey
from contracts.events import NS_PER_MS, ns_to_datetime
from contracts.windows import CHILDREN, POINTS, Moments

Db = AsyncDatabase[dict[str, Any]]
MOMENTS = {"count": 1, "mean": 1, "m2": 1, "min": 1, "max": 1}
# A smallest window has points, a larger one children: one projection serves both.
WITH_DETAIL = {**MOMENTS, POINTS: 1, CHILDREN: 1}


@dataclass(slots=True)
class WindowSource:
    """How windows are read: the analytics settings they were written with,
    the cache of final windows and the bound on concurrent lookups."""

    sizes_s: list[int]
    grace_ns: int
    lateness_ns: int
    cache: WindowCache
    concurrency: int = 8


async def resolve_series(db: Db, key: str) -> Series | None:
    """The sensor a key names from the raw readings, or None when no reading of
    it was ever stored. `sensor.field` is tried as a whole sensor name first.
    Used only where no statistics name the key: each miss scans `iot.readings`."""
    if await db.readings.find_one({"sensor": key}, {"_id": 1}) is not None:
        return Series(key, None)
    sensor, dot, field_name = key.rpartition(".")
    if dot and sensor and await db.readings.find_one({"sensor": sensor}, {"_id": 1}):
        return Series(sensor, field_name)
    return None


async def raw_moments(db: Db, series: Series, parts: Sequence[tuple[str | None, int, int]],
                      moments: Moments) -> None:
    """Add the readings of `series` in each (device or any, lo, hi) to `moments`:
    one query (a scan on FerretDB), filtered exactly on `ts_ns` here."""
    if not parts:
        return
    # BSON `ts` has milliseconds; widen to whole ms and filter on exact `ts_ns`.
    edges = [{"ts": {"$gte": ns_to_datetime(lo), "$lt": ns_to_datetime(hi + NS_PER_MS - 1)}}
             for _, lo, hi in parts]
    query: dict[str, Any] = {"sensor": series.sensor, "$or": edges}
    devices = {device for device, _, _ in parts}
    if None not in devices:
        query["device_id"] = {"$in": sorted(d for d in devices if d is not None)}
    async for doc in db.readings.find(query, {"device_id": 1, "ts_ns": 1, "value": 1,
                                              "values": 1}):
        ts_ns = int(doc["ts_ns"])
        if not any((dev is None or dev == doc["device_id"]) and lo <= ts_ns < hi
                   for dev, lo, hi in parts):
            continue
        value = reading_value(doc, series.field)
        if value is not None:
            moments.add(value)


class WindowReader:
    """One request's window documents: cached final windows, the rest fetched
    by `_id $in` in rounds, at most `concurrency` finds in flight.

    Each round walks the plan (`api.metrics_walk`) over what is known so far
    and fetches every document the walk names in one find per projection, so
    an ordinary range is one round; an empty window or a document without
    children or points costs another round per level it falls back."""

    def __init__(self, db: Db, source: WindowSource) -> None:
        self.db, self.source = db, source
        self.limit = asyncio.Semaphore(source.concurrency)
        self.sizes = sorted(source.sizes_s)
        self.rounds = self.finds = self.documents = 0  # round trips, finds, ids asked

    async def moments(self, refs: list[SeriesRef], lo: int,
                      hi: int) -> tuple[Moments, list[tuple[str, int, int]]]:
        """The moments of the series' readings in [lo, hi) from windows, and the
        (device, lo, hi) parts only raw readings answer."""
        fetched: dict[WindowKey, dict[str, Any]] = {}

        def known(key: WindowKey) -> dict[str, Any] | None:
            doc = fetched.get(key)
            return doc if doc is not None else self.source.cache.get(key)

        # Ends: every round makes each wanted key known, and a known key is
        # never wanted again; a request has finitely many window keys.
        while True:
            walk = Walk(self.sizes, self.source.grace_ns, self.source.lateness_ns,
                        known).run(refs, lo, hi)
            if not walk.wanted:
                return walk.moments, walk.raw
            await self.fetch(walk.wanted, fetched)

    async def fetch(self, wanted: dict[WindowKey, bool],
                    fetched: dict[WindowKey, dict[str, Any]]) -> None:
        """Fetch the wanted documents into `fetched` (MISSING where none is
        stored) and cache the final ones."""
        self.rounds += 1
        self.documents += len(wanted)
        by_detail: dict[bool, list[str]] = {}
        for window_id, detail in wanted:
            by_detail.setdefault(detail, []).append(window_id)

        async def find(detail: bool, ids: list[str]) -> tuple[bool, list[dict[str, Any]]]:
            async with self.limit:
                self.finds += 1
                cursor = self.db.windows.find({"_id": {"$in": ids}},
                                              WITH_DETAIL if detail else MOMENTS)
                return detail, await cursor.to_list(None)

        found = await asyncio.gather(*(find(d, ids) for d, ids in by_detail.items()))
        docs = {(doc["_id"], detail): doc for detail, batch in found for doc in batch}
        for key, final in wanted.items():
            doc = docs.get(key, MISSING)
            fetched[key] = doc
            if final:
                self.source.cache.put(key, doc)


async def key_moments(db: Db, reader: WindowReader | None, key: str, device_id: str | None,
                      start_ns: int, end_ns: int) -> Moments:
    moments = Moments()
    stats: list[dict[str, Any]] = []
    if reader is not None:
        projection = {"device_id": 1, "sensor": 1, "field": 1, "last_ts_ns": 1}
        if device_id is not None:  # by `_id`: pushed down
            stats = await db.stats.find({"_id": {"$in": stats_ids(key, device_id)}},
                                        projection).to_list(None)
        else:  # one scan of `iot.stats`: one small document per series
            sensor = key.rpartition(".")[0]
            stats = await db.stats.find({"sensor": {"$in": [key, sensor]}},
                                        projection).to_list(None)
    chosen = choose_series(key, stats) if reader is not None else None
    if reader is None or chosen is None:
        series = await resolve_series(db, key)
        if series is not None:
            await raw_moments(db, series, [(device_id, start_ns, end_ns)], moments)
        return moments
    series, refs = chosen
    moments, raw = await reader.moments(refs, start_ns, end_ns)
    await raw_moments(db, series, raw, moments)
    return moments


async def compute_metrics(db: Db, request: MetricsRequest,
                          source: WindowSource | None) -> dict[str, dict[str, Any]]:
    """Per requested sensor key, its metrics over [start, end). With no window
    source every raw reading in the range is read (the naive way, kept for
    comparison and for deployments without stream analytics)."""
    reader = None if source is None or not source.sizes_s else WindowReader(db, source)

    async def one(key: str, metrics: list[str]) -> tuple[str, dict[str, Any]]:
        moments = await key_moments(db, reader, key, request.device_id, request.start_ns,
                                    request.end_ns)
        return key, metric_values(moments, metrics)

    pairs = await asyncio.gather(*(one(k, m) for k, m in request.sensors.items()))
    return dict(pairs)
