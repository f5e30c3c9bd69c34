"""`POST /compute/metrics` against MongoDB: stored windows for the whole
slots inside the range, raw readings for the edges, merged exactly."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.metrics_logic import (
    MetricsRequest,
    Series,
    dedupe_windows,
    metric_values,
    plan_cover,
    reading_value,
)
from contracts.events import NS_PER_MS, NS_PER_S, ns_to_datetime
from contracts.windows import Moments

Db = AsyncDatabase[dict[str, Any]]
# Far enough in the future that no stored window reaches it.
UNBOUNDED = 2**62


async def resolve_series(db: Db, key: str) -> Series | None:
    """The sensor a key names, or None when no reading of it was ever stored.
    `sensor.field` is tried as a whole sensor name first (names may hold dots)."""
    if await db.readings.find_one({"sensor": key}, {"_id": 1}) is not None:
        return Series(key, None)
    sensor, dot, field_name = key.rpartition(".")
    if dot and sensor and await db.readings.find_one({"sensor": sensor}, {"_id": 1}):
        return Series(sensor, field_name)
    return None


def _series_filter(series: Series, device_id: str | None) -> dict[str, Any]:
    query: dict[str, Any] = {"sensor": series.sensor}
    if device_id is not None:
        query["device_id"] = device_id
    return query


async def stored_windows(db: Db, series: Series, device_id: str | None, start_ns: int,
                         end_ns: int, sizes: list[int]) -> list[dict[str, Any]]:
    """Every stored window of the series that can help with [start, end), in ONE
    query: FerretDB on SQLite pushes down nothing but `_id` equality, so each
    query is a scan of the collection and their number is what costs."""
    if not sizes:
        return []
    widest = max(sizes) * NS_PER_S
    query = {**_series_filter(series, device_id), "field": {"$in": list(series.window_fields)},
             "size_s": {"$in": sizes},
             "start_ns": {"$gte": start_ns - start_ns % widest, "$lt": end_ns + widest}}
    projection = {"device_id": 1, "size_s": 1, "start_ns": 1, "field": 1, "count": 1,
                  "mean": 1, "m2": 1, "min": 1, "max": 1}
    return list(await db.windows.find(query, projection).to_list(None))


def watermarks(docs: list[dict[str, Any]], sizes: list[int]) -> list[tuple[int, int]]:
    """Per window size, the end of the newest window seen: windows are written
    when they close, so the slots before it are final (late readings revise
    stored windows). Seeing only windows up to one widest window past the range
    can only make the watermark earlier, which moves work to raw readings and
    keeps the answer exact."""
    newest = dict.fromkeys(sizes, -UNBOUNDED)
    for doc in docs:
        size_s = int(doc["size_s"])
        newest[size_s] = max(newest[size_s], int(doc["start_ns"]) + size_s * NS_PER_S)
    return list(newest.items())


async def series_moments(db: Db, series: Series, device_id: str | None, start_ns: int,
                         end_ns: int, sizes: list[int]) -> Moments:
    moments = Moments()
    docs = await stored_windows(db, series, device_id, start_ns, end_ns, sizes)
    plan = plan_cover(start_ns, end_ns, watermarks(docs, sizes))
    chosen = [doc for doc in docs if any(
        doc["size_s"] == span.size_s and span.first_start_ns <= doc["start_ns"] < span.end_start_ns
        for span in plan.windows)]
    for doc in dedupe_windows(chosen):
        moments.merge(Moments.from_dict(doc))
    if plan.raw:
        # BSON `ts` has milliseconds; widen to whole ms and filter on exact `ts_ns`.
        edges = [{"ts": {"$gte": ns_to_datetime(lo),
                         "$lt": ns_to_datetime(hi + NS_PER_MS - 1)}} for lo, hi in plan.raw]
        query = {**_series_filter(series, device_id), "$or": edges}
        async for doc in db.readings.find(query, {"ts_ns": 1, "value": 1, "values": 1}):
            ts_ns = int(doc["ts_ns"])
            if not any(lo <= ts_ns < hi for lo, hi in plan.raw):
                continue
            value = reading_value(doc, series.field)
            if value is not None:
                moments.add(value)
    return moments


async def compute_metrics(db: Db, request: MetricsRequest,
                          window_sizes: list[int]) -> dict[str, dict[str, Any]]:
    """Per requested sensor key, its metrics over [start, end). Pass no window
    sizes to read every raw reading (the naive way, kept for comparison)."""
    async def one(key: str, metrics: list[str]) -> tuple[str, dict[str, Any]]:
        series = await resolve_series(db, key)
        if series is None:
            return key, metric_values(Moments(), metrics)
        moments = await series_moments(db, series, request.device_id, request.start_ns,
                                       request.end_ns, window_sizes)
        return key, metric_values(moments, metrics)

    pairs = await asyncio.gather(*(one(k, m) for k, m in request.sensors.items()))
    return dict(pairs)
