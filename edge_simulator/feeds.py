"""What each device sends and when: device ids, per-device data feeds and the
tick schedule (start offsets, jitter, speed). Pure: the caller owns the clock."""

from __future__ import annotations

import random
import socket
from typing import Protocol

from contracts.errors import ConfigError, SchemaError
from contracts.events import NS_PER_S, check_id
from edge_simulator.csv_replay import CsvSeries
from edge_simulator.samples import Sample, SyntheticSensor, inject_anomaly


def device_ids(count: int, prefix: str | None = None, hostname: str | None = None) -> list[str]:
    """`{prefix}-{i}`, the prefix defaulting to the host name: compose replicas
    have distinct host names (container ids), so `--scale sensor=N` gives N
    fleets of distinct devices with no configuration."""
    stem = prefix or hostname or socket.gethostname()
    ids = [f"{stem}-{i}" for i in range(count)]
    try:
        for device_id in (ids[0], ids[-1]) if ids else ():
            check_id("device id", device_id)
    except SchemaError as exc:
        raise ConfigError(f"{exc}; pick another --device-prefix") from exc
    return ids


class Feed(Protocol):
    def offset_s(self, tick: int) -> float | None:
        """When tick `tick` is due, in seconds of device time after the device's
        start; None once the feed is exhausted."""

    def samples(self, tick: int, now_ns: int) -> list[Sample]:
        """The samples of tick `tick`; `now_ns` is the wall clock at sending."""


class SyntheticFeed:
    def __init__(self, sensors: list[SyntheticSensor], period_s: float) -> None:
        self._sensors = sensors
        self._period_s = period_s

    def offset_s(self, tick: int) -> float | None:
        return tick * self._period_s

    def samples(self, tick: int, now_ns: int) -> list[Sample]:
        taken = (sensor.sample(now_ns) for sensor in self._sensors)
        return [sample for sample in taken if sample is not None]


class CsvFeed:
    """Replays a CSV's rows in order. With a time column the file's spacing is
    kept, moved to start at `start_ns` unless `keep_times`; without one a row
    is due every `period_s`. Device times advance at file speed whatever the
    wall-clock `--speed`."""

    def __init__(self, series: CsvSeries, period_s: float, start_ns: int, *, loop: bool,
                 keep_times: bool, anomaly_rate: float, rng: random.Random) -> None:
        self._series = series
        self._period_ns = round(period_s * NS_PER_S)
        self._loop = loop
        self._anomaly_rate = anomaly_rate
        self._rng = rng
        times = series.times_ns
        if times is None:
            self._origin_ns = start_ns
        else:
            self._origin_ns = times[0] if keep_times else start_ns
            self._span_ns = times[-1] - times[0] + (series.typical_gap_ns or self._period_ns)

    def _relative_ns(self, tick: int) -> int | None:
        rows = len(self._series.rows)
        if tick >= rows and not self._loop:
            return None
        times = self._series.times_ns
        if times is None:
            return tick * self._period_ns
        cycle, index = divmod(tick, rows)
        return cycle * self._span_ns + times[index] - times[0]

    def offset_s(self, tick: int) -> float | None:
        relative = self._relative_ns(tick)
        return None if relative is None else relative / NS_PER_S

    def samples(self, tick: int, now_ns: int) -> list[Sample]:
        relative = self._relative_ns(tick)
        if relative is None:
            return []
        ts_ns = self._origin_ns + relative
        row = self._series.rows[tick % len(self._series.rows)]
        out = []
        for column, value in zip(self._series.columns, row, strict=True):
            if value is None:
                continue
            anomaly = bool(self._anomaly_rate) and self._rng.random() < self._anomaly_rate
            if anomaly:
                value = inject_anomaly(value, self._rng)
            out.append(Sample(column, ts_ns, value=value, anomaly=anomaly))
        return out


class TickClock:
    """Wall-clock due times of one device's ticks: a random start offset within
    one period so a fleet does not publish in lockstep, and per-tick jitter
    that does not accumulate into drift."""

    def __init__(self, feed: Feed, period_s: float, speed: float, jitter: float,
                 rng: random.Random) -> None:
        self._feed = feed
        self._scale = 1.0 / speed
        self._period_s = period_s
        self._jitter_s = jitter * period_s * self._scale
        self._rng = rng
        self.start = 0.0

    def begin(self, now: float) -> None:
        self.start = now + self._rng.uniform(0.0, self._period_s * self._scale)

    def due(self, tick: int) -> float | None:
        offset = self._feed.offset_s(tick)
        if offset is None:
            return None
        shake = self._rng.uniform(-self._jitter_s, self._jitter_s) if self._jitter_s else 0.0
        return self.start + offset * self._scale + shake
