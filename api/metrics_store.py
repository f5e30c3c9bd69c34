"""`POST /compute/metrics` against MongoDB: whole closed windows inside the
range and the readings at its edges (from the smallest windows' points), all
fetched by `_id`, merged exactly; raw readings only where no closed window
can answer (see `api.metrics_plan` for why everything goes by `_id`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.metrics_logic import MetricsRequest, Series, metric_values, reading_value
from api.metrics_plan import (
    MISSING,
    SeriesPlan,
    SeriesRef,
    WindowCache,
    choose_series,
    is_final,
    plan_series,
    stats_ids,
)
from contracts.events import NS_PER_MS, NS_PER_S, ns_to_datetime
from contracts.windows import POINTS_TS, POINTS_VALUE, Moments, points_from_document

Db = AsyncDatabase[dict[str, Any]]
MOMENTS = {"count": 1, "mean": 1, "m2": 1, "min": 1, "max": 1}
WITH_POINTS = {**MOMENTS, POINTS_TS: 1, POINTS_VALUE: 1}


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
    `_id` with at most `concurrency` in flight."""

    def __init__(self, db: Db, source: WindowSource) -> None:
        self.db, self.source = db, source
        self.limit = asyncio.Semaphore(source.concurrency)
        self.lookups = 0

    async def fetch(self, ref: SeriesRef, size_s: int, start_ns: int,
                    points: bool) -> dict[str, Any]:
        key = (ref.window_id(size_s, start_ns), points)
        cached = self.source.cache.get(key)
        if cached is not None:
            return cached
        async with self.limit:
            self.lookups += 1
            doc = await self.db.windows.find_one({"_id": key[0]},
                                                 WITH_POINTS if points else MOMENTS)
        doc = MISSING if doc is None else doc
        if is_final(ref, start_ns + size_s * NS_PER_S, self.source.grace_ns,
                    self.source.lateness_ns):
            self.source.cache.put(key, doc)
        return doc

    async def series(self, plan: SeriesPlan, moments: Moments) -> list[tuple[int, int]]:
        """Merge the plan's windows and edges into `moments`; return the spans
        raw readings must still answer."""
        ref, base_s = plan.ref, min(self.source.sizes_s)
        whole = [self.fetch(ref, size, start, False) for size, start in plan.windows]
        edge = [self.fetch(ref, base_s, start, True) for start, _, _ in plan.edges]
        docs = await asyncio.gather(*whole, *edge)
        for doc in docs[:len(whole)]:
            if doc is not MISSING:
                moments.merge(Moments.from_dict(doc))
        raw = list(plan.raw)
        for (_, lo, hi), doc in zip(plan.edges, docs[len(whole):], strict=True):
            if doc is MISSING or int(doc["count"]) == 0:
                continue
            points = points_from_document(doc)
            if points is None:  # over the points cap, or written without them
                raw.append((lo, hi))
                continue
            for ts_ns, value in points:
                if lo <= ts_ns < hi:
                    moments.add(value)
        return raw


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
    source = reader.source
    plans = [plan_series(ref, start_ns, end_ns, source.sizes_s, source.grace_ns)
             for ref in refs]
    parts = await asyncio.gather(*(reader.series(plan, moments) for plan in plans))
    raw: list[tuple[str | None, int, int]] = [(plan.ref.device_id, lo, hi)
           for plan, spans in zip(plans, parts, strict=True) for lo, hi in spans]
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
