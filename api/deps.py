"""Dependencies of the routes, as `Annotated` aliases (full-stack-fastapi-template style)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from pymongo.asynchronous.database import AsyncDatabase

from contracts.settings import Settings

if TYPE_CHECKING:
    from api.ingest import IngestPipe
    from api.stream_hub import StreamHub


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> AsyncDatabase[dict[str, Any]]:
    db: AsyncDatabase[dict[str, Any]] = request.app.state.db
    return db


def get_hub(request: Request) -> StreamHub:
    hub: StreamHub = request.app.state.hub
    return hub


def get_ingest(request: Request) -> IngestPipe:
    pipe: IngestPipe = request.app.state.ingest
    return pipe


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DbDep = Annotated[AsyncDatabase[dict[str, Any]], Depends(get_db)]
HubDep = Annotated["StreamHub", Depends(get_hub)]
IngestDep = Annotated["IngestPipe", Depends(get_ingest)]
