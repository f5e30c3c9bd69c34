"""The operations endpoint every non-HTTP service exposes: `/health` (the
process is alive), `/ready` (it can do its job, with details) and `/metrics`
(Prometheus). Served from a daemon thread so it answers even when the main loop
is blocked waiting on Kafka or MQTT."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

ReadyCheck = Callable[[], tuple[bool, dict[str, Any]]]


class OpsServer:
    """`ready_check` returns (ready, details); details are shown on `/ready`."""

    def __init__(self, host: str, port: int, ready_check: ReadyCheck,
                 registry: CollectorRegistry = REGISTRY) -> None:
        handler = _make_handler(ready_check, registry)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(ready_check: ReadyCheck,
                  registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                self._send(200, b'{"status":"ok"}', "application/json")
            elif path == "/ready":
                try:
                    ready, details = ready_check()
                except Exception as exc:  # a broken check must read as not ready, not crash
                    ready, details = False, {"error": repr(exc)}
                body = orjson.dumps({"ready": ready, **details}, default=str)
                self._send(200 if ready else 503, body, "application/json")
            elif path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"detail":"not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes and probes are not events worth a log line."""

    return Handler


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so loops finish their batch, flush,
    commit and ack before exiting instead of dying mid-write."""
    import signal

    stop = threading.Event()

    def _handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    return stop
