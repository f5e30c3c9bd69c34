"""Synthetic sensors: daily seasonality, a slow trend, correlated noise,
occasional spikes and dropouts, and injected anomalies on request.

Pure: no clock and no MQTT. The caller passes the device time of each tick, so
a seeded run with the same start time yields the same values.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from contracts.errors import ConfigError
from contracts.events import NS_PER_S

SECONDS_PER_DAY = 86_400
# Warmest in mid-afternoon, as outdoors; as a fraction of the UTC day.
PEAK_DAY_FRACTION = 15 / 24
# Correlated noise looks like a real sensor drifting, not like dice.
NOISE_MEMORY = 0.8


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one sensor: `value` for scalars, `values` for vectors."""

    sensor: str
    ts_ns: int
    value: float | None = None
    values: dict[str, float] | None = None
    unit: str | None = None
    anomaly: bool = False


@dataclass(frozen=True, slots=True)
class SensorProfile:
    unit: str
    base: tuple[float, ...]
    daily_amplitude: float
    noise: float
    trend_per_day: float
    spike: float
    axes: tuple[str, ...] = ()  # empty: a scalar sensor
    drift_axis: int = 0  # which axis the seasonality and trend move
    low: float = -math.inf
    high: float = math.inf


PROFILES: dict[str, SensorProfile] = {
    "temperature": SensorProfile("°C", (21.0,), 4.0, 0.15, 0.3, 6.0, low=-40.0, high=85.0),
    # Relative humidity falls as the day warms up, hence the negative amplitude.
    "humidity": SensorProfile("%", (55.0,), -12.0, 0.8, -0.5, 18.0, low=0.0, high=100.0),
    "pressure": SensorProfile("hPa", (1013.25,), 1.2, 0.05, -0.8, 5.0),
    "soil_moisture": SensorProfile("%", (35.0,), 1.5, 0.3, -3.0, 12.0, low=0.0, high=100.0),
    "accelerometer": SensorProfile("m/s²", (0.0, 0.0, 9.80665), 0.02, 0.05, 0.0, 4.0,
                                   axes=("x", "y", "z"), drift_axis=2),
    "gyroscope": SensorProfile("rad/s", (0.0, 0.0, 0.0), 0.0, 0.02, 0.0, 1.5,
                               axes=("x", "y", "z")),
    # Named and shaped as the Sensor Logger app sends it.
    "barometer": SensorProfile("hPa", (1013.25, 0.0), 1.2, 0.05, -0.8, 5.0,
                               axes=("pressure", "relativeAltitude")),
}


def check_sensor_names(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names:
        raise ConfigError(f"unknown synthetic sensor(s) {unknown or names}; "
                          f"choose from {', '.join(PROFILES)}")
    return names


class SyntheticSensor:
    """One sensor of one device. `sample` is called once per tick."""

    def __init__(self, name: str, rng: random.Random, start_ns: int, *,
                 spike_rate: float, dropout_rate: float, anomaly_rate: float) -> None:
        self.name = name
        self.profile = PROFILES[name]
        self._rng = rng
        self._start_ns = start_ns
        self._spike_rate = spike_rate
        self._dropout_rate = dropout_rate
        self._anomaly_rate = anomaly_rate
        # Each device sits somewhere else and drifts differently.
        self._offset = rng.gauss(0.0, self.profile.noise * 4)
        self._phase = rng.uniform(-0.04, 0.04)
        self._noise = [0.0] * max(1, len(self.profile.axes))
        self._dropout_left = 0

    def sample(self, ts_ns: int) -> Sample | None:
        """The reading at device time `ts_ns`, or None while the sensor drops out."""
        rng = self._rng
        if self._dropout_left > 0:
            self._dropout_left -= 1
            return None
        if self._dropout_rate and rng.random() < self._dropout_rate:
            self._dropout_left = rng.randint(2, 30)
            return None
        p = self.profile
        day_fraction = (ts_ns // NS_PER_S % SECONDS_PER_DAY) / SECONDS_PER_DAY
        season = p.daily_amplitude * math.cos(
            2 * math.pi * (day_fraction - PEAK_DAY_FRACTION - self._phase))
        trend = p.trend_per_day * (ts_ns - self._start_ns) / (NS_PER_S * SECONDS_PER_DAY)
        shock = 0.0
        if self._spike_rate and rng.random() < self._spike_rate:
            shock = rng.choice((-1.0, 1.0)) * p.spike * rng.uniform(0.5, 1.0)
        anomaly = bool(self._anomaly_rate) and rng.random() < self._anomaly_rate
        if anomaly:
            # Far outside anything seasonality, noise or spikes produce.
            shock = rng.choice((-1.0, 1.0)) * (4 * p.spike + 3 * abs(p.daily_amplitude))
        numbers = []
        for i, base in enumerate(p.base):
            self._noise[i] = NOISE_MEMORY * self._noise[i] + rng.gauss(0.0, p.noise)
            drift = season + trend + self._offset if i == p.drift_axis else 0.0
            number = base + drift + self._noise[i] + shock
            numbers.append(round(min(p.high, max(p.low, number)), 4))
        if p.axes:
            return Sample(self.name, ts_ns, values=dict(zip(p.axes, numbers, strict=True)),
                          unit=p.unit, anomaly=anomaly)
        return Sample(self.name, ts_ns, value=numbers[0], unit=p.unit, anomaly=anomaly)


def inject_anomaly(value: float, rng: random.Random) -> float:
    """A clear outlier for replayed data, whose scale is not known in advance."""
    return value + rng.choice((-1.0, 1.0)) * 10 * max(abs(value), 1.0)
