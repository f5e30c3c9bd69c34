"""`POST /compute/metrics` against MongoDB: closed windows and, at the range
edges, their children's moments and the smallest windows' readings, all
fetched by `_id` and merged exactly; raw readings only where no closed window
can answer (see `api.metrics_plan` for why everything goes by `_id`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.metrics_logic import MetricsRequest, Series, metric_values, reading_value
from api.metrics_plan import (
    MISSING,
    SeriesRef,
    WindowCache,
    choose_series,
    is_final,
    split,
    stats_ids,
    watermark,
)
from contracts.events import NS_PER_MS, NS_PER_S, ns_to_datetime
from contracts.windows import (
    CHILDREN,
    POINTS,
    Moments,
    children_from_document,
    points_from_document,
)

Db = AsyncDatabase[dict[str, Any]]
MOMENTS = {"count": 1, "mean": 1, "m2": 1, "min": 1, "max": 1}
WITH_POINTS = {**MOMENTS, POINTS: 1}
WITH_CHILDREN = {**MOMENTS, CHILDREN: 1}


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


async def raw_moments(db: Db, series: Series, parts: list[tuple[str | None, int, int]],
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
    """One request's window lookups: cached final windows, the rest fetched by
    `_id` with at most `concurrency` in flight.

    A range is solved top down: each window of the largest size overlapping it
    is merged whole when inside the range; when the range ends inside it, its
    children's moments (`children`) give the whole children, and only the child
    cut by the range edge is opened, down to a smallest window whose points
    give the readings. So a range costs a few documents per size, not one per
    window: 24 h unaligned is 2 day windows, then 1 hour, 1 minute and 1 10 s
    window per edge. Windows not closed yet, and documents without children or
    points, fall back to the next smaller size and finally to raw readings."""

    def __init__(self, db: Db, source: WindowSource) -> None:
        self.db, self.source = db, source
        self.limit = asyncio.Semaphore(source.concurrency)
        self.sizes = sorted(source.sizes_s)
        self.lookups = 0

    def worth_opening(self, level: int, lo: int, hi: int) -> bool:
        """A cut window of a larger size helps only when a whole child of it
        lies in [lo, hi); otherwise its children are read directly."""
        if level == 0:
            return True
        child = self.sizes[level - 1] * NS_PER_S
        return -(-lo // child) * child + child <= hi

    async def fetch(self, ref: SeriesRef, size_s: int, start_ns: int,
                    detail: bool) -> dict[str, Any]:
        key = (ref.window_id(size_s, start_ns), detail)
        cached = self.source.cache.get(key)
        if cached is not None:
            return cached
        projection = MOMENTS
        if detail:
            projection = WITH_POINTS if size_s == self.sizes[0] else WITH_CHILDREN
        async with self.limit:
            self.lookups += 1
            doc = await self.db.windows.find_one({"_id": key[0]}, projection)
        doc = MISSING if doc is None else doc
        if is_final(ref, start_ns + size_s * NS_PER_S, self.source.grace_ns,
                    self.source.lateness_ns):
            self.source.cache.put(key, doc)
        return doc

    async def solve(self, ref: SeriesRef, lo: int, hi: int, level: int, moments: Moments,
                    raw: list[tuple[int, int]]) -> None:
        """Merge the series' readings in [lo, hi) into `moments` using windows of
        `self.sizes[level]` and smaller; append what only raw readings answer."""
        step = self.sizes[level] * NS_PER_S
        await asyncio.gather(*(self.part(ref, level, start, a, b, moments, raw)
                               for start, a, b in split(lo, hi, step)))

    async def part(self, ref: SeriesRef, level: int, start: int, lo: int, hi: int,
                   moments: Moments, raw: list[tuple[int, int]]) -> None:
        size_s = self.sizes[level]
        end = start + size_s * NS_PER_S
        if end > watermark(ref, self.source.grace_ns):  # not closed yet
            if level:
                await self.solve(ref, lo, hi, level - 1, moments, raw)
            else:
                raw.append((lo, hi))
            return
        whole = lo == start and hi == end
        if not whole and not self.worth_opening(level, lo, hi):
            await self.solve(ref, lo, hi, level - 1, moments, raw)
            return
        doc = await self.fetch(ref, size_s, start, not whole)
        if doc is MISSING or int(doc["count"]) == 0:
            return  # closed and empty
        if whole:
            moments.merge(Moments.from_dict(doc))
        elif level == 0:
            points = points_from_document(doc)
            if points is None:  # over the points cap, or written without them
                raw.append((lo, hi))
                return
            for ts_ns, value in points:
                if lo <= ts_ns < hi:
                    moments.add(value)
        else:
            children = children_from_document(doc, self.sizes[level - 1])
            if children is None:
                await self.solve(ref, lo, hi, level - 1, moments, raw)
                return
            child_ns = self.sizes[level - 1] * NS_PER_S
            cut = []
            for child_start, child in children:
                child_end = child_start + child_ns
                if lo <= child_start and child_end <= hi:
                    moments.merge(child)
                elif child_start < hi and lo < child_end:
                    cut.append(self.part(ref, level - 1, child_start, max(lo, child_start),
                                         min(hi, child_end), moments, raw))
            await asyncio.gather(*cut)


async def key_moments(db: Db, reader: WindowReader | None, key: str, device_id: str | None,
                      start_ns: int, end_ns: int) -> Moments:
    moments = Moments()
    stats: list[dict[str, Any]] = []
    if reader is not None:
        projection = {"device_id": 1, "sensor": 1, "field": 1, "last_ts_ns": 1}
        if device_id is not None:  # by `_id`: pushed down
            found = await asyncio.gather(*(db.stats.find_one({"_id": i}, projection)
                                           for i in stats_ids(key, device_id)))
            stats = [doc for doc in found if doc is not None]
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
    top = len(reader.sizes) - 1
    raws: list[list[tuple[int, int]]] = [[] for _ in refs]
    await asyncio.gather(*(reader.solve(ref, start_ns, end_ns, top, moments, raw)
                           for ref, raw in zip(refs, raws, strict=True)))
    await raw_moments(db, series, [(ref.device_id, lo, hi) for ref, raw in
                                   zip(refs, raws, strict=True) for lo, hi in raw], moments)
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
