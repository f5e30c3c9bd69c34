"""The dashboard in headless Chromium (Debian's `chromium`), driven over the
DevTools protocol: the page loads, charts receive points from /stream, an
anomaly injected while it runs shows up; a screenshot is kept."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from .conftest import Store, make_result

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=20))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"page never satisfied {expression!r} within {timeout_s} s")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run `apt-get install -y chromium`",
                    pytrace=False)
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,820",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open DevTools within 30 s"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                 if t["type"] == "page"]
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=2**26,
                     open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def test_dashboard_shows_live_points_and_an_injected_anomaly(
        live_server: str, store: Store, browser: DevTools, tmp_path: Path) -> None:
    now = time.time_ns()
    history = []
    for i in range(40):
        for device, base in (("pump-1", 20.0), ("pump-2", 55.0)):
            ts = now - (40 - i) * 500_000_000
            history.append(make_result(device, "temperature", ts, base + (i % 7) * 0.3,
                                       anomaly=device == "pump-1" and i == 30,
                                       scored_at_ns=ts))
    store.results(history, publish=False)
    browser.call("Page.enable")
    browser.call("Page.navigate", url=live_server + "/")
    browser.wait_for("document.querySelectorAll('.panel').length === 2")
    browser.wait_for("Number(document.body.dataset.events) >= 80")
    assert browser.evaluate("document.body.dataset.anomalies") == "1"
    points = browser.evaluate(
        "[...document.querySelectorAll('.panel')].map(p => Number(p.dataset.points))")
    assert all(n > 30 for n in points), points

    spike = make_result("pump-2", "temperature", time.time_ns(), 99.0, anomaly=True)
    store.results([spike])
    browser.wait_for("document.querySelector('[data-series=\"pump-2 / temperature\"]')"
                     ".dataset.anomalies === '1'")
    assert browser.evaluate("document.body.dataset.anomalies") == "2"
    assert browser.evaluate("document.getElementById('status').textContent") == "live"
    time.sleep(0.7)  # one render tick so the spike is drawn
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    (tmp_path / "dashboard.png").write_bytes(shot)
    # The README's screenshot is refreshed on request only, so a test run
    # leaves the work tree clean: UPDATE_SCREENSHOTS=1 make test PYTEST_ARGS=...
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs" / "dashboard.png").write_bytes(shot)
