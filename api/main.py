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
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from api.ingest import IngestPipe
from api.observability import record_request
from api.routes import ingest, metrics, ops, queries, stream
from api.routes.ops import STATIC
from api.stream_hub import StreamHub
from contracts.clients import async_mongo_client, kafka_producer
from contracts.errors import SchemaError, ServiceUnavailable
from contracts.settings import Settings

log = logging.getLogger(__name__)

# What the queries filter and sort on; creating an existing index is a no-op.
INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    "readings": [[("sensor", ASCENDING), ("ts", ASCENDING)],
                 [("device_id", ASCENDING), ("sensor", ASCENDING), ("ts", ASCENDING)],
                 [("ts", ASCENDING), ("_id", ASCENDING)]],
    "analytics": [[("scored_at", ASCENDING), ("_id", ASCENDING)],
                  [("ts", ASCENDING), ("_id", ASCENDING)],
                  [("device_id", ASCENDING), ("sensor", ASCENDING), ("ts", ASCENDING)]],
    "windows": [[("sensor", ASCENDING), ("size_s", ASCENDING), ("start_ns", DESCENDING)],
                [("device_id", ASCENDING), ("sensor", ASCENDING), ("size_s", ASCENDING),
                 ("start_ns", DESCENDING)],
                [("start", ASCENDING), ("_id", ASCENDING)]],
}


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    for collection, indexes in INDEXES.items():
        for keys in indexes:
            try:
                await db[collection].create_index(keys)
            except PyMongoError as exc:  # e.g. the same keys under another name: still usable
                log.warning("index not created", extra={"collection": collection,
                                                        "keys": str(keys), "error": str(exc)})


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mongo = async_mongo_client(settings)
        db = mongo[settings.mongo_db]
        pipe = IngestPipe(settings, kafka_producer(settings))
        hub = StreamHub(db, poll_s=settings.api_stream_poll_ms / 1000,
                        overlap_s=settings.api_stream_overlap_s,
                        queue_size=settings.api_stream_queue_size)
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

    for module in (ops, queries, metrics, stream, ingest):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
