"""Operations: liveness, readiness (MongoDB and Kafka reachable), Prometheus,
and the dashboard page with its settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import DbDep, SettingsDep
from api.schemas import DashboardConfig

router = APIRouter(tags=["operations"])
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, db: DbDep) -> JSONResponse:
    """MongoDB answers a ping, Kafka lists its topics and the live results are
    subscribed on MQTT: 200, else 503 with details."""
    details: dict[str, Any] = {}
    try:
        await asyncio.wait_for(db.command("ping"), 3)
        details["mongo"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is shown
        details["mongo"] = f"unavailable: {exc}"
    try:
        producer = request.app.state.ingest.producer
        await asyncio.to_thread(producer.list_topics, timeout=3)
        details["kafka"] = "ok"
    except Exception as exc:
        details["kafka"] = f"unavailable: {exc}"
    hub = request.app.state.hub
    details["mqtt"] = "ok" if hub.subscribed.is_set() else "not subscribed to results yet"
    is_ready = all(v == "ok" for v in details.values())
    return JSONResponse({"ready": is_ready, **details}, status_code=200 if is_ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/dashboard/config", response_model=DashboardConfig)
async def dashboard_config(settings: SettingsDep) -> DashboardConfig:
    """What the dashboard shows: seconds of history and the k of mean ± k·std."""
    return DashboardConfig(window_s=settings.api_dashboard_window_s,
                           std_k=settings.api_dashboard_std_k)
