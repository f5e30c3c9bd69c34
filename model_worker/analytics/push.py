"""Coalescing of the statistics pushed on MQTT.

A statistics message is a cumulative snapshot of its series, so when batches
come faster than a dashboard can use them (catch-up, a pre-loaded stream) all
but the latest snapshot of each series are redundant - and publishing one
costs the worker ~30 us, about what analysing the reading does. Snapshots are
therefore kept per series (latest wins) and published together once
ANALYTICS_STATS_PUSH_INTERVAL_S has passed since the last push; the stage also
pushes from its idle tick and on flush, revoke and shutdown, so the last
snapshot of every series always goes out. Windows are not coalesced.

No client library here: the stage hands in the function that publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Publish = Callable[[list[dict[str, Any]]], None]


class StatsPush:
    def __init__(self, interval_s: float, publish: Publish) -> None:
        self.interval_s = interval_s
        self.publish = publish
        self.pending: dict[str, dict[str, Any]] = {}
        self._pushed_at = time.monotonic()

    def offer(self, docs: list[dict[str, Any]], now: float) -> None:
        """Queue `docs` (statistics documents, `_id` = series id); publish all
        queued ones if the interval is up. Interval 0: publish `docs` at once."""
        if self.interval_s <= 0:
            if docs:
                self.publish(docs)
            return
        if docs:
            self.pending.update((d["_id"], d) for d in docs)
        self.push_if_due(now)

    def push_if_due(self, now: float) -> None:
        if self.pending and now - self._pushed_at >= self.interval_s:
            self.push(now)

    def push(self, now: float | None = None) -> None:
        """Publish every queued snapshot now, whatever the interval."""
        pending, self.pending = self.pending, {}
        self._pushed_at = time.monotonic() if now is None else now
        if pending:
            self.publish(list(pending.values()))

    def __len__(self) -> int:
        return len(self.pending)
