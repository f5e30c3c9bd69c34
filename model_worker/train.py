"""Fit Prophet models: on stored readings or a CSV (`train`), or on synthetic
temperature-like data for the demo (`make-demo-model`). Saves Prophet JSON
(or joblib) and optionally a PNG of actual vs forecast with the interval and
the anomalies marked."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from prophet import Prophet
from prophet.serialize import model_to_json

from contracts.errors import ConfigError
from contracts.events import Reading, datetime_to_ns
from model_worker.scoring import scored_value

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.1
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_since(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"--since {text!r}: use a number and s, m, h or d, e.g. 7d")
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


def frame_from_documents(documents: list[dict[str, Any]],
                         fields: dict[str, str]) -> pd.DataFrame:
    """ds/y rows from `iot.readings` documents, scored the way the worker scores."""
    rows = []
    for doc in documents:
        data = {**doc, "event_id": doc["_id"]}
        data["ts_ns"] = data.get("ts_ns") or datetime_to_ns(doc["ts"])
        reading = Reading.from_dict(data)
        rows.append((reading.ts_ns, scored_value(reading, fields)[1]))
    frame = pd.DataFrame(rows, columns=["ts_ns", "y"])
    frame["ds"] = pd.to_datetime(frame.pop("ts_ns"), unit="ns")
    return frame.sort_values("ds").reset_index(drop=True)


def frame_from_csv(path: Path) -> pd.DataFrame:
    """A CSV with columns ds,y (or ts,value); ds as ISO-8601 text, UTC."""
    frame = pd.read_csv(path).rename(columns={"ts": "ds", "value": "y"})
    if not {"ds", "y"} <= set(frame.columns):
        raise ConfigError(f"{path}: needs columns ds,y (or ts,value), has {list(frame.columns)}")
    frame["ds"] = pd.to_datetime(frame["ds"], utc=True).dt.tz_localize(None)
    return frame[["ds", "y"]].sort_values("ds").reset_index(drop=True)


@dataclass(slots=True)
class FitReport:
    rows: int
    holdout_rows: int
    holdout_mae: float
    holdout_coverage: float
    fit_s: float


def fit_prophet(frame: pd.DataFrame) -> tuple[Prophet, FitReport]:
    """Fit on all but a held-back tail, measure it, then refit on everything."""
    if len(frame) < 20:
        raise ConfigError(f"only {len(frame)} rows to fit on; need at least 20")
    started = time.perf_counter()
    cut = int(len(frame) * (1 - HOLDOUT_FRACTION))
    head, tail = frame.iloc[:cut], frame.iloc[cut:]
    probe = _new_prophet().fit(head)
    forecast = probe.predict(tail[["ds"]])
    inside = ((tail["y"].to_numpy() >= forecast["yhat_lower"].to_numpy())
              & (tail["y"].to_numpy() <= forecast["yhat_upper"].to_numpy()))
    model = _new_prophet().fit(frame)
    report = FitReport(rows=len(frame), holdout_rows=len(tail),
                       holdout_mae=float(np.mean(np.abs(tail["y"].to_numpy()
                                                        - forecast["yhat"].to_numpy()))),
                       holdout_coverage=float(inside.mean()),
                       fit_s=time.perf_counter() - started)
    return model, report


def _new_prophet() -> Prophet:
    return Prophet(daily_seasonality=True, weekly_seasonality=False, yearly_seasonality=False,
                   interval_width=0.95)


def save_model(model: Prophet, out: Path, fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: the worker's watcher never sees half a file.
    partial = out.with_name(f".{out.name}.partial")
    if fmt == "json":
        partial.write_text(model_to_json(model), encoding="utf-8")
    else:
        joblib.dump(model, partial)
    partial.replace(out)


def plot_forecast(model: Prophet, frame: pd.DataFrame, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forecast = model.predict(frame[["ds"]])
    actual = frame["y"].to_numpy()
    outside = (actual < forecast["yhat_lower"].to_numpy()) | (
        actual > forecast["yhat_upper"].to_numpy())
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    ax.fill_between(forecast["ds"], forecast["yhat_lower"], forecast["yhat_upper"],
                    color="tab:blue", alpha=0.2, label="interval")
    ax.plot(forecast["ds"], forecast["yhat"], color="tab:blue", lw=1.2, label="forecast")
    ax.plot(frame["ds"], actual, ".", color="black", ms=2, label="actual")
    ax.plot(frame["ds"][outside], actual[outside], "o", color="tab:red", ms=4,
            label=f"anomalies ({int(outside.sum())})")
    ax.set_title(title)
    ax.set_xlabel("time (UTC)")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def simulator_frame(sensor: str, days: int = 7, step_min: int = 20, devices: int = 20,
                    seed: int = 7, end: datetime | None = None) -> pd.DataFrame:
    """History of one scalar sensor as the edge simulator generates it, from
    several devices at once so the interval also covers how devices differ."""
    # The demo's promise is "fitted on the data the simulator sends"; its own
    # generator is the only faithful source of that shape.
    import random

    from edge_simulator.samples import PROFILES, SyntheticSensor

    if sensor not in PROFILES or PROFILES[sensor].axes:
        scalar = [name for name, profile in PROFILES.items() if not profile.axes]
        raise ConfigError(f"no demo model for {sensor!r}: choose from {', '.join(scalar)}")
    end = end or datetime.now(UTC).replace(second=0, microsecond=0)
    step_ns = step_min * 60 * 1_000_000_000
    end_ns = datetime_to_ns(end)
    start_ns = end_ns - days * 24 * 60 * 60 * 1_000_000_000
    rows: list[tuple[int, float]] = []
    for device in range(devices):
        # Trend counted from `end`, where simulated devices start: their level now
        # is the model's level now.
        generator = SyntheticSensor(sensor, random.Random(seed * 1000 + device), end_ns,
                                    spike_rate=0.0, dropout_rate=0.0, anomaly_rate=0.0)
        for ts_ns in range(start_ns, end_ns, step_ns):
            sample = generator.sample(ts_ns)
            if sample is not None and sample.value is not None:
                rows.append((ts_ns, sample.value))
    rows.sort()
    return pd.DataFrame({"ds": pd.to_datetime([t for t, _ in rows], unit="ns"),
                         "y": [v for _, v in rows]})


def demo_frame(days: int = 7, step_min: int = 10, seed: int = 7,
               end: datetime | None = None) -> pd.DataFrame:
    """Temperature-like data ending now: 21 °C, a 3 °C daily swing peaking mid
    afternoon, a slow drift and sensor noise."""
    end = end or datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    ds = pd.date_range(end=end, periods=days * 24 * 60 // step_min, freq=f"{step_min}min")
    hours = ds.hour.to_numpy() + ds.minute.to_numpy() / 60
    rng = np.random.default_rng(seed)
    y = (21 + 3 * np.sin(2 * np.pi * (hours - 9) / 24)
         + np.linspace(0, 0.5, len(ds)) + rng.normal(0, 0.3, len(ds)))
    return pd.DataFrame({"ds": ds, "y": y})
