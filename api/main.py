"""`create_app(settings)`: the FastAPI application, its lifespan (clients
opened here and closed on shutdown) and its error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from api.deps import QueryTokenToHeader, ReadAuth
from api.ingest import IngestPipe
from api.observability import record_request
from api.routes import ingest, metrics, ops, queries, stream
from api.routes.ops import STATIC
from api.stream_hub import StreamHub
from contracts.clients import async_mongo_client, kafka_producer
from contracts.collections import ANALYTICS, READINGS, WINDOWS, ensure_indexes_async
from contracts.errors import SchemaError, ServiceUnavailable
from contracts.settings import Settings

log = logging.getLogger(__name__)

async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    try:
        await ensure_indexes_async(db, (READINGS, ANALYTICS, WINDOWS))
    except PyMongoError as exc:  # queries still work without them, only slower
        log.warning("indexes not created", extra={"error": str(exc)})


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mongo = async_mongo_client(settings)
        db = mongo[settings.mongo_db]
        pipe = IngestPipe(settings, kafka_producer(settings))
        hub = StreamHub(db, settings)
        app.state.db, app.state.ingest, app.state.hub = db, pipe, hub
        try:
            await ensure_indexes(db)
        except PyMongoError as exc:  # start anyway: /ready reports MongoDB until it is back
            log.warning("MongoDB not reachable at start", extra={"error": str(exc)})
        pipe.start()
        hub.start()
        log.info("api started", extra={"db": settings.mongo_db})
        try:
            yield
        finally:
            await hub.stop()
            pipe.close()
            await mongo.close()
            log.info("api stopped")

    app = FastAPI(
        title="edgepipe API",
        summary="Queries, time-window metrics, live results and Sensor Logger ingest.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.middleware("http")(record_request)
    app.add_middleware(QueryTokenToHeader)  # outermost: runs before routing and the log

    @app.exception_handler(SchemaError)
    async def bad_input(request: Request, exc: SchemaError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(PyMongoError)
    async def mongo_down(request: Request, exc: PyMongoError) -> JSONResponse:
        log.warning("MongoDB error", extra={"path": request.url.path, "error": str(exc)})
        return JSONResponse({"detail": f"MongoDB unavailable: {exc}"}, status_code=503,
                            headers={"Retry-After": "5"})

    # Operations (/health, /ready, /metrics, the dashboard page) stay open for probes
    # and scrapers; ingest checks its own token; every read needs API_READ_TOKEN if set.
    for module in (ops, ingest):
        app.include_router(module.router)
    for module in (queries, metrics, stream):
        app.include_router(module.router, dependencies=[ReadAuth])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
