"""Read-only queries: devices, readings, analytics, windows, running stats."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import DbDep, SettingsDep
from api.pagination import after_cursor, decode_cursor, encode_cursor, time_range
from api.schemas import (
    AnalyticsOut,
    AnalyticsQuery,
    DeviceOut,
    Page,
    ReadingOut,
    SensorSummary,
    SeriesQuery,
    WindowOut,
    WindowsQuery,
    jsonable,
)
from contracts.events import EPOCH, check_id
from contracts.settings import Settings

router = APIRouter(tags=["queries"])


def _limit(query: SeriesQuery, settings: Settings) -> int:
    return min(query.limit or settings.api_page_limit_default, settings.api_page_limit_max)


def _filters(query: SeriesQuery, time_field: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if query.device_id is not None:
        found["device_id"] = query.device_id
    if query.sensor is not None:
        found["sensor"] = query.sensor
    found.update(time_range(time_field, query.start, query.end))
    found.update(after_cursor(time_field, query.cursor))
    return found


async def _page(collection: Any, found: dict[str, Any], time_field: str,
                limit: int) -> tuple[list[dict[str, Any]], str | None]:
    docs = await collection.find(found).sort([(time_field, 1), ("_id", 1)]).limit(
        limit + 1).to_list(None)
    more = len(docs) > limit
    docs = docs[:limit]
    cursor = encode_cursor(docs[-1][time_field], str(docs[-1]["_id"])) if more else None
    return docs, cursor


@router.get("/devices", response_model=list[DeviceOut])
async def list_devices(db: DbDep, device_id: str | None = None) -> list[DeviceOut]:
    """Every device with its sensors, reading counts and first/last reading time."""
    match = {} if device_id is None else {"device_id": check_id("device_id", device_id)}
    groups = await (await db.readings.aggregate([
        {"$match": match},
        {"$group": {"_id": {"device_id": "$device_id", "sensor": "$sensor"},
                    "count": {"$sum": 1}}},
    ])).to_list(None)

    async def summary(group: dict[str, Any]) -> tuple[str, SensorSummary]:
        key = {"device_id": group["_id"]["device_id"], "sensor": group["_id"]["sensor"]}
        first, last = await asyncio.gather(
            db.readings.find_one(key, {"ts": 1}, sort=[("ts", 1)]),
            db.readings.find_one(key, {"ts": 1}, sort=[("ts", -1)]))
        return key["device_id"], SensorSummary(
            sensor=key["sensor"], count=group["count"],
            first_seen=first["ts"] if first else None, last_seen=last["ts"] if last else None)

    by_device: dict[str, list[SensorSummary]] = {}
    for device, sensor in await asyncio.gather(*(summary(g) for g in groups)):
        by_device.setdefault(device, []).append(sensor)
    devices = []
    for device, sensors in sorted(by_device.items()):
        sensors.sort(key=lambda s: s.sensor)
        firsts = [s.first_seen for s in sensors if s.first_seen]
        lasts = [s.last_seen for s in sensors if s.last_seen]
        devices.append(DeviceOut(device_id=device, sensors=sensors,
                                 count=sum(s.count for s in sensors),
                                 first_seen=min(firsts, default=None),
                                 last_seen=max(lasts, default=None)))
    return devices


@router.get("/readings", response_model=Page[ReadingOut])
async def list_readings(db: DbDep, settings: SettingsDep,
                        query: Annotated[SeriesQuery, Query()]) -> Page[ReadingOut]:
    """Raw readings sorted by device time, oldest first."""
    docs, cursor = await _page(db.readings, _filters(query, "ts"), "ts", _limit(query, settings))
    items = [ReadingOut(event_id=str(d.pop("_id")), **d) for d in docs]
    return Page[ReadingOut](items=items, next_cursor=cursor)


@router.get("/analytics", response_model=Page[AnalyticsOut])
async def list_analytics(db: DbDep, settings: SettingsDep,
                         query: Annotated[AnalyticsQuery, Query()]) -> Page[AnalyticsOut]:
    """Scored results sorted by device time; `anomalies=true` keeps those outside the band."""
    found = _filters(query, "ts")
    if query.anomalies:
        found["anomaly"] = True
    docs, cursor = await _page(db.analytics, found, "ts", _limit(query, settings))
    items = [AnalyticsOut(event_id=str(d.pop("_id")), **d) for d in docs]
    return Page[AnalyticsOut](items=items, next_cursor=cursor)


@router.get("/windows", response_model=Page[WindowOut])
async def list_windows(db: DbDep, settings: SettingsDep,
                       query: Annotated[WindowsQuery, Query()]) -> Page[WindowOut]:
    """Closed tumbling windows sorted by start; `from`/`to` bound the start."""
    found = _filters(query, "start")
    if query.field is not None:
        found["field"] = query.field
    if query.size_s is not None:
        found["size_s"] = query.size_s
    docs, cursor = await _page(db.windows, found, "start", _limit(query, settings))
    items = [WindowOut(id=str(d.pop("_id")), **d) for d in docs]
    return Page[WindowOut](items=items, next_cursor=cursor)


@router.get("/stats", response_model=Page[dict[str, Any]])
async def list_stats(db: DbDep, settings: SettingsDep,
                     query: Annotated[SeriesQuery, Query()]) -> Page[dict[str, Any]]:
    """Running statistics per series (`_id` = `device|sensor|field`), as stream
    analytics keeps them; times come out as ISO-8601 UTC."""
    found: dict[str, Any] = {k: v for k, v in (("device_id", query.device_id),
                                                 ("sensor", query.sensor)) if v is not None}
    if query.cursor is not None:
        found["_id"] = {"$gt": decode_cursor(query.cursor)[1]}
    limit = _limit(query, settings)
    docs = await db.stats.find(found).sort("_id", 1).limit(limit + 1).to_list(None)
    more = len(docs) > limit
    docs = docs[:limit]
    cursor = encode_cursor(EPOCH, str(docs[-1]["_id"])) if more else None
    return Page[dict[str, Any]](items=[jsonable(d) for d in docs], next_cursor=cursor)

