"""`python -m api`: serve the API with uvicorn on API_HOST:API_PORT."""

from __future__ import annotations

import signal

import uvicorn

from api.main import create_app
from contracts.logs import configure_logging
from contracts.settings import get_settings


def main() -> None:
    settings = get_settings()
    configure_logging("api", settings.log_level, settings.log_format)
    # Open /stream connections would hold a graceful shutdown forever; cut them after 5 s
    # (browsers reconnect with Last-Event-ID and lose nothing).
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to
    # the handler that was there before it; with Python's defaults that turns a
    # clean stop into exit -15 or a KeyboardInterrupt traceback.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_config=None, timeout_graceful_shutdown=5, access_log=False)


if __name__ == "__main__":
    main()
