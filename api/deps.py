"""Dependencies of the routes, as `Annotated` aliases (full-stack-fastapi-template style)."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pymongo.asynchronous.database import AsyncDatabase
from starlette.types import ASGIApp, Receive, Scope, Send

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


# The three ways a read token may come, as the ingest token does: a header for
# programs, ?token= for what cannot set headers (the browser's EventSource).
# auto_error=False: the check below decides, and only when a token is configured.
_bearer = HTTPBearer(auto_error=False, description="API_READ_TOKEN")
_header = APIKeyHeader(name="X-Token", auto_error=False)
_query = APIKeyQuery(name="token", auto_error=False)


def require_read_token(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
    query: Annotated[str | None, Depends(_query)],
) -> None:
    """With API_READ_TOKEN set, refuse a read without that token (401, JSON)."""
    settings: Settings = request.app.state.settings
    expected = settings.api_read_token.get_secret_value()
    if not expected:
        return
    # ?token= arrives as X-Token (QueryTokenToHeader); `query` serves apps without it.
    presented = (bearer.credentials if bearer else None) or header or query
    check_token(presented, expected, "missing or wrong read token (API_READ_TOKEN)")


def check_token(presented: str | None, expected: str, refusal: str) -> None:
    """401 with `refusal` unless `presented` is `expected` (both API tokens)."""
    # compare_digest: the time taken does not tell how much of a guess was right.
    if not hmac.compare_digest((presented or "").encode(), expected.encode()):
        raise HTTPException(401, refusal, headers={"WWW-Authenticate": "Bearer"})


ReadAuth = Depends(require_read_token)


class QueryTokenToHeader:
    """ASGI middleware: `?token=` on any path but /ingest/ becomes an `X-Token`
    header before routing. The read endpoints validate their query strictly
    (extra="forbid"), so the token must leave the query string; a browser's
    EventSource (the dashboard's /stream) cannot send it any other way. It also
    keeps the token out of the request log. Ingest reads its own ?token=."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and b"token=" in scope["query_string"]
                and not scope["path"].startswith("/ingest/")):
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            tokens = [value for key, value in pairs if key == "token"]
            if tokens:
                scope = {**scope,
                         "query_string": urlencode([(k, v) for k, v in pairs
                                                    if k != "token"]).encode("latin-1"),
                         "headers": [*scope["headers"],
                                     (b"x-token", tokens[-1].encode("latin-1", "replace"))]}
        await self.app(scope, receive, send)
