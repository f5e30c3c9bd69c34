"""Prometheus figures of the API, labelled by route template (not raw path,
which would make one series per device id)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("api_requests_total", "HTTP requests answered",
                   ["method", "route", "status"])
LATENCY = Histogram("api_request_seconds", "Time to the response headers",
                    ["method", "route"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
STREAM_CLIENTS = Gauge("api_stream_clients", "Open /stream connections")
STREAM_EVENTS = Counter("api_stream_events_total", "Scored results sent on /stream")
STREAM_DROPPED = Counter("api_stream_slow_disconnects_total",
                         "Stream clients cut off because their queue filled")
INGESTED = Counter("api_ingest_readings_total", "Readings acknowledged by Kafka from HTTP ingest")
INGEST_REJECTED = Counter("api_ingest_rejected_total", "Ingest bodies sent to the dead letters",
                          ["reason"])


async def record_request(request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", "unmatched")
    LATENCY.labels(request.method, template).observe(time.perf_counter() - started)
    REQUESTS.labels(request.method, template, str(response.status_code)).inc()
    return response
