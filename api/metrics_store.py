"""`POST /compute/metrics` against MongoDB: stored windows for the whole
slots inside the range, raw readings for the edges, merged exactly."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.metrics_logic import (
    CoverPlan,
    MetricsRequest,
    Series,
    dedupe_windows,
    metric_values,
    plan_cover,
    reading_value,
)
from contracts.events import NS_PER_MS, ns_to_datetime
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


async def watermarks(db: Db, series: Series, device_id: str | None,
                     sizes: list[int]) -> list[tuple[int, int]]:
    """Per window size, the end of the newest stored window: windows are written
    when they close, so everything before that end is final (late readings
    revise stored windows)."""
    async def newest_end(size_s: int) -> tuple[int, int]:
        query = {**_series_filter(series, device_id), "size_s": size_s,
                 "field": {"$in": list(series.window_fields)}}
        doc = await db.windows.find_one(query, {"start_ns": 1}, sort=[("start_ns", -1)])
        if doc is None:
            return size_s, -UNBOUNDED
        return size_s, int(doc["start_ns"]) + size_s * 1_000_000_000

    return list(await asyncio.gather(*(newest_end(s) for s in sizes)))


async def series_moments(db: Db, series: Series, device_id: str | None,
                         plan: CoverPlan) -> Moments:
    moments = Moments()
    base = _series_filter(series, device_id)
    if plan.windows:
        slots = [{"size_s": span.size_s,
                  "start_ns": {"$gte": span.first_start_ns, "$lt": span.end_start_ns}}
                 for span in plan.windows]
        query = {**base, "field": {"$in": list(series.window_fields)}, "$or": slots}
        projection = {"device_id": 1, "size_s": 1, "start_ns": 1, "field": 1, "count": 1,
                      "mean": 1, "m2": 1, "min": 1, "max": 1}
        docs = await db.windows.find(query, projection).to_list(None)
        for doc in dedupe_windows(docs):
            moments.merge(Moments.from_dict(doc))
    if plan.raw:
        # BSON `ts` has milliseconds; widen to whole ms and filter on exact `ts_ns`.
        edges = [{"ts": {"$gte": ns_to_datetime(lo),
                         "$lt": ns_to_datetime(hi + NS_PER_MS - 1)}} for lo, hi in plan.raw]
        query = {**base, "$or": edges}
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
        sizes = await watermarks(db, series, request.device_id, window_sizes)
        plan = plan_cover(request.start_ns, request.end_ns, sizes)
        moments = await series_moments(db, series, request.device_id, plan)
        return key, metric_values(moments, metrics)

    pairs = await asyncio.gather(*(one(k, m) for k, m in request.sensors.items()))
    return dict(pairs)
