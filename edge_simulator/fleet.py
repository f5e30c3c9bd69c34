"""Runs many devices from one thread: a heap of due ticks and one selector
over every device's socket. Per message the loop costs a publish and a
PUBACK read; per device and second, one keepalive check. No thread per
device, so thousands of connections fit in one process."""

from __future__ import annotations

import heapq
import logging
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from contracts.settings import Settings
from edge_simulator.device import Device, FleetCounters
from edge_simulator.feeds import Feed, TickClock
from edge_simulator.payloads import Encoder

log = logging.getLogger(__name__)

# New TCP connections per loop round: a burst of thousands would overflow the
# broker's listen backlog and stall the loop.
CONNECT_BURST = 50
# Ticks fired per round before the loop reads acks again.
TICK_BURST = 2000
HOUSEKEEPING_S = 0.5
MAX_WAIT_S = 0.1


@dataclass(slots=True)
class DeviceRun:
    device: Device
    feed: Feed
    encoder: Encoder
    clock: TickClock
    tick: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    elapsed_s: float
    devices: int
    connected: int
    sent: int
    acked: int
    queued: int
    dropped: int
    refused: int
    reconnects: int
    connect_failures: int
    anomalies: int
    acked_per_s: float  # over the last progress interval

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


Reporter = Callable[[Snapshot], None]


class Fleet:
    def __init__(self, settings: Settings, runs: list[DeviceRun], counters: FleetCounters,
                 selector: selectors.BaseSelector, *, ticks_per_device: int | None,
                 duration_s: float | None, drain_timeout_s: float,
                 progress_interval_s: float, report: Reporter) -> None:
        self._settings = settings
        self._runs = runs
        self._counters = counters
        self._selector = selector
        self._ticks_per_device = ticks_per_device
        self._duration_s = duration_s
        self._drain_timeout_s = drain_timeout_s
        self._progress_interval_s = progress_interval_s
        self._report = report
        self._started = time.monotonic()
        self._last_report = (self._started, 0)

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        c = self._counters
        then, acked_then = self._last_report
        rate = (c.acked - acked_then) / (now - then) if now > then else 0.0
        return Snapshot(elapsed_s=round(now - self._started, 3), devices=len(self._runs),
                        connected=c.connected, sent=c.sent, acked=c.acked, queued=c.queued,
                        dropped=c.dropped, refused=c.refused, reconnects=c.reconnects,
                        connect_failures=c.connect_failures, anomalies=c.anomalies,
                        acked_per_s=round(rate, 1))

    def run(self, stop: threading.Event) -> Snapshot:
        """Sends until the feeds end, the count or duration is reached, or `stop`
        is set; then waits (bounded) for the outboxes to drain and disconnects."""
        self._started = start = time.monotonic()
        self._last_report = (start, 0)
        deadline = start + self._duration_s if self._duration_s else None
        due: list[tuple[float, int]] = []
        for index, run in enumerate(self._runs):
            run.clock.begin(start)
            first = run.clock.due(0)
            if first is not None:
                due.append((first, index))
        heapq.heapify(due)
        to_connect = deque(run.device for run in self._runs)
        generating = True
        drain_until = 0.0
        next_housekeeping = start + HOUSEKEEPING_S
        next_report = start + self._progress_interval_s
        touched: set[Device] = set()
        while True:
            now = time.monotonic()
            if generating and (stop.is_set() or not due or (deadline and now >= deadline)):
                generating = False
                drain_until = now + self._drain_timeout_s
                for run in self._runs:
                    run.device.enqueue(run.encoder.flush())
                    touched.add(run.device)
            for _ in range(min(CONNECT_BURST, len(to_connect))):
                device = to_connect.popleft()
                device.awaiting_connect = False
                device.connect(self._settings, now)
            if generating:
                self._fire_due(due, now, touched)
            for device in touched:
                device.pump()
            touched.clear()
            if not generating and (self._counters.queued <= 0 or now >= drain_until):
                break
            wait = 0.0 if to_connect else MAX_WAIT_S
            if generating and due:
                wait = min(wait, max(0.0, due[0][0] - now))
            for key, mask in self._selector.select(wait):
                device = key.data
                if mask & selectors.EVENT_READ:
                    device.client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    device.client.loop_write()
                touched.add(device)
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING_S
                self._housekeeping(now, to_connect)
            if now >= next_report:
                next_report = now + self._progress_interval_s
                self._emit_report()
        self._disconnect_all()
        return self.snapshot()

    def _fire_due(self, due: list[tuple[float, int]], now: float, touched: set[Device]) -> None:
        counters = self._counters
        limit = self._ticks_per_device
        for _ in range(TICK_BURST):
            if not due or due[0][0] > now:
                return
            _, index = heapq.heappop(due)
            run = self._runs[index]
            samples = run.feed.samples(run.tick, time.time_ns())
            counters.anomalies += sum(1 for sample in samples if sample.anomaly)
            run.device.enqueue(run.encoder.encode(samples))
            touched.add(run.device)
            run.tick += 1
            next_due = None if limit is not None and run.tick >= limit else run.clock.due(run.tick)
            if next_due is None:
                run.device.enqueue(run.encoder.flush())
            else:
                heapq.heappush(due, (next_due, index))

    def _housekeeping(self, now: float, to_connect: deque[Device]) -> None:
        for run in self._runs:
            device = run.device
            client = device.client
            if client.socket() is not None:
                client.loop_misc()
            elif (not device.awaiting_connect and device.next_connect_at <= now):
                device.awaiting_connect = True
                to_connect.append(device)

    def _emit_report(self) -> None:
        snap = self.snapshot()
        self._last_report = (time.monotonic(), snap.acked)
        self._report(snap)

    def _disconnect_all(self) -> None:
        for run in self._runs:
            device = run.device
            device.closing = True
            if device.client.socket() is not None:
                device.client.disconnect()
                device.flush()
        if self._counters.queued > 0:
            log.warning("stopped with messages not acknowledged by the broker",
                        extra={"unacked": self._counters.queued})
