"""`POST /ingest/sensor-logger`: the Sensor Logger app's HTTP push."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from api.deps import IngestDep, SettingsDep, check_token
from api.ingest import now_ns
from api.observability import INGEST_REJECTED, INGESTED
from api.schemas import IngestOut
from contracts.errors import DecodeError

router = APIRouter(tags=["ingest"])
log = logging.getLogger(__name__)

EXAMPLE = {
    "messageId": 12, "sessionId": "2f6b-demo", "deviceId": "pixel-7",
    "payload": [
        {"name": "accelerometer", "time": 1763780400123456789,
         "values": {"x": 0.12, "y": 9.78, "z": 0.31}, "accuracy": 3},
        {"name": "light", "time": 1763780400223456789, "values": {"lux": 312.0}},
    ],
}


def _presented_token(authorization: str | None, header_token: str | None,
                     query_token: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return header_token or query_token


@router.post("/ingest/sensor-logger", response_model=IngestOut,
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "example": EXAMPLE}}, "required": True}},
             responses={400: {"description": "malformed batch (sent to the dead letters)"},
                        401: {"description": "missing or wrong token"},
                        413: {"description": "body larger than BRIDGE_MAX_PAYLOAD_BYTES"},
                        503: {"description": "Kafka did not acknowledge; retry"}})
async def ingest_sensor_logger(
    request: Request, pipe: IngestDep, settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
    x_ingest_token: Annotated[str | None, Header()] = None,
    token: str | None = None,
) -> JSONResponse:
    """Point the app's HTTP push at `http://HOST:8000/ingest/sensor-logger?token=TOKEN`
    (or send `Authorization: Bearer TOKEN`). 200 only once Kafka holds every reading."""
    expected = settings.api_ingest_token.get_secret_value()
    if expected:
        check_token(_presented_token(authorization, x_ingest_token, token), expected,
                    "missing or wrong ingest token")
    declared = request.headers.get("content-length", "")
    # Far beyond the codec's limit: refuse before reading it into memory.
    if declared.isdigit() and int(declared) > 4 * settings.bridge_max_payload_bytes:
        raise HTTPException(413, f"body of {declared} bytes is over the limit of "
                                 f"{settings.bridge_max_payload_bytes}")
    body = await request.body()
    received_at_ns = now_ns()
    try:
        readings = pipe.decode(body, received_at_ns)
    except DecodeError as exc:
        INGEST_REJECTED.labels(exc.reason).inc()
        await pipe.dead_letter(exc, body, received_at_ns)
        log.warning("ingest rejected", extra={"reason": exc.reason, "error": str(exc)})
        status = 413 if exc.reason == "too_large" else 400
        return JSONResponse({"detail": str(exc), "reason": exc.reason}, status_code=status)
    if readings:
        await pipe.send(readings)
        INGESTED.inc(len(readings))
    return JSONResponse(IngestOut(accepted=len(readings)).model_dump())
