"""Coalescing of the statistics pushed on MQTT.

A statistics message is a cumulative snapshot of its series, so when batches
come faster than a dashboard can use them (catch-up, a pre-loaded stream) all
but the latest snapshot of each series are redundant - and publishing one
costs the worker ~10 us (~30 with paho's own publish), more than analysing
the reading does. Snapshots are therefore kept per series (latest wins) and
published together once ANALYTICS_STATS_PUSH_INTERVAL_S has passed since the
last push; the stage also pushes from its idle tick and on flush, revoke and
shutdown, so the last snapshot of every series always goes out. Windows are
not coalesced.

The stage hands in what is pushed as live series objects (`Snapshot`: a
series id and `stats_document()`), and documents are built only when a push
goes out: a fast stream changes every series in every batch, and building a
document per change cost more than the pushes it makes. No client library
here: the stage hands in the function that publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Snapshot(Protocol):
    @property
    def series_id(self) -> str: ...

    def stats_document(self) -> dict[str, Any]: ...


Publish = Callable[[list[dict[str, Any]]], None]


class StatsPush:
    def __init__(self, interval_s: float, publish: Publish) -> None:
        self.interval_s = interval_s
        self.publish = publish
        self.pending: dict[str, Snapshot] = {}
        self._pushed_at = time.monotonic()

    def offer(self, series: Sequence[Snapshot], now: float) -> None:
        """Queue `series` whose statistics changed; publish the documents of
        all queued ones if the interval is up. Interval 0: publish at once."""
        if self.interval_s <= 0:
            if series:
                self.publish([s.stats_document() for s in series])
            return
        if series:
            self.pending.update((s.series_id, s) for s in series)
        self.push_if_due(now)

    def push_if_due(self, now: float) -> None:
        if self.pending and now - self._pushed_at >= self.interval_s:
            self.push(now)

    def push(self, now: float | None = None) -> None:
        """Publish every queued series' statistics now, whatever the interval."""
        pending, self.pending = self.pending, {}
        self._pushed_at = time.monotonic() if now is None else now
        if pending:
            self.publish([s.stats_document() for s in pending.values()])

    def __len__(self) -> int:
        return len(self.pending)
