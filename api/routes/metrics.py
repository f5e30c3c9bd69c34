"""`POST /compute/metrics`: the seed API's contract, answered from stored
windows plus the raw readings at the edges of the range."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from api.deps import DbDep, SettingsDep
from api.metrics_logic import MetricsRequestError, parse_metrics_request
from api.metrics_plan import WindowCache
from api.metrics_store import WindowSource, compute_metrics
from api.schemas import MetricsOut
from contracts.events import NS_PER_MS, NS_PER_S
from contracts.settings import Settings

router = APIRouter(tags=["metrics"])

EXAMPLE = {
    "temperature": ["count", "min", "max", "average"],
    "accelerometer.x": ["mean", "std"],
    "from": "2026-11-21 00:00:00",
    "to": "2026-11-22 00:00:00",
    "device_id": "sensor-1",
}


def window_source(request: Request, settings: Settings) -> WindowSource:
    """The app's window source: its cache of final windows lives as long as the app."""
    source: WindowSource | None = getattr(request.app.state, "metrics_windows", None)
    if source is None:
        source = WindowSource(sorted(set(settings.analytics_window_sizes_s)),
                              settings.analytics_grace_ms * NS_PER_MS,
                              settings.analytics_allowed_lateness_s * NS_PER_S,
                              WindowCache(settings.api_metrics_cache_windows),
                              settings.api_metrics_lookup_concurrency)
        request.app.state.metrics_windows = source
    return source


@router.post("/compute/metrics", response_model=MetricsOut,
             responses={400: {"model": MetricsOut,
                              "description": "nothing valid to compute, or bad times"}})
async def post_compute_metrics(
    request: Request, db: DbDep, settings: SettingsDep,
    body: Any = Body(..., examples=[EXAMPLE]),  # noqa: B008  (seed shape: free-form keys)
) -> Any:
    """Metrics per sensor over [from, to). Keys other than `from`, `to` and
    `device_id` name sensors (`sensor` or `sensor.field`) mapped to metric lists:
    count, min, max, average, mean, sum, std (population)."""
    try:
        wanted = parse_metrics_request(body, max_days=settings.api_max_range_days)
    except MetricsRequestError as exc:
        return JSONResponse({"result": {}, "errors": [str(exc)], "detail": str(exc)},
                            status_code=400)
    if not wanted.sensors:
        return JSONResponse({"result": {}, "errors": wanted.errors}, status_code=400)
    result = await compute_metrics(db, wanted, window_source(request, settings))
    return MetricsOut(result=result, errors=wanted.errors)
