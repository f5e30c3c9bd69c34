"""`POST /compute/metrics`: the seed API's contract, answered from stored
windows plus the raw readings at the edges of the range."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from api.deps import DbDep, SettingsDep
from api.metrics_logic import MetricsRequestError, parse_metrics_request
from api.metrics_store import compute_metrics
from api.schemas import MetricsOut

router = APIRouter(tags=["metrics"])

EXAMPLE = {
    "temperature": ["count", "min", "max", "average"],
    "accelerometer.x": ["mean", "std"],
    "from": "2026-11-21 00:00:00",
    "to": "2026-11-22 00:00:00",
    "device_id": "sensor-1",
}


@router.post("/compute/metrics", response_model=MetricsOut,
             responses={400: {"model": MetricsOut,
                              "description": "nothing valid to compute, or bad times"}})
async def post_compute_metrics(
    db: DbDep, settings: SettingsDep,
    body: Any = Body(..., examples=[EXAMPLE]),  # noqa: B008  (seed shape: free-form keys)
) -> Any:
    """Metrics per sensor over [from, to). Keys other than `from`, `to` and
    `device_id` name sensors (`sensor` or `sensor.field`) mapped to metric lists:
    count, min, max, average, mean, sum, std (population)."""
    try:
        request = parse_metrics_request(body, max_days=settings.api_max_range_days)
    except MetricsRequestError as exc:
        return JSONResponse({"result": {}, "errors": [str(exc)], "detail": str(exc)},
                            status_code=400)
    if not request.sensors:
        return JSONResponse({"result": {}, "errors": request.errors}, status_code=400)
    result = await compute_metrics(db, request, settings.analytics_window_sizes_s)
    return MetricsOut(result=result, errors=request.errors)
