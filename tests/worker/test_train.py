"""The train CLI: a model that loads and a PNG worth looking at."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image
from pymongo import MongoClient

from contracts.errors import ConfigError
from contracts.events import Reading, make_event_id
from contracts.settings import Settings
from edge_simulator.samples import SyntheticSensor
from model_worker.models import load_model
from model_worker.train import demo_frame, simulator_frame

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "model_worker", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def assert_real_plot(path: Path) -> None:
    assert path.stat().st_size > 20_000
    pixels = image.imread(path)
    assert pixels.shape[:2] == (500, 1200)
    assert pixels[..., :3].std() > 0.05, "the plot is blank"


def test_train_from_csv_saves_loadable_joblib_and_plot(tmp_path: Path) -> None:
    csv = tmp_path / "temperature.csv"
    demo_frame(days=2, step_min=10).to_csv(csv, index=False)
    out = run_cli("train", "--csv", str(csv), "--sensor", "temperature",
                  "--out", str(tmp_path / "temperature.joblib"), "--plot", str(tmp_path / "f.png"))
    assert "interval coverage" in out
    loaded = load_model(tmp_path / "temperature.joblib", trust_pickle=True, grid_step_s=3600,
                        now_ns=time.time_ns())
    assert loaded.stamp.kind == "prophet" and loaded.stamp.name == "temperature"
    assert_real_plot(tmp_path / "f.png")


@pytest.mark.services
def test_train_from_mongo_saves_prophet_json(settings: Settings, tmp_path: Path,
                                             mongo: MongoClient[dict[str, Any]]) -> None:
    frame = demo_frame(days=2, step_min=10)
    documents = []
    for ds, y in zip(frame["ds"], frame["y"], strict=True):
        ts_ns = int(ds.value)
        documents.append(Reading(make_event_id("dev-1", "temperature", ts_ns), "dev-1",
                                 "temperature", ts_ns, value=float(y)).to_document())
    mongo[settings.mongo_db]["readings"].insert_many(documents)
    run_cli("train", "--from-mongo", "--sensor", "temperature", "--device", "dev-1",
            "--since", "30d", "--out", str(tmp_path / "temperature.json"),
            "--plot", str(tmp_path / "m.png"), env={"MONGO_DB": settings.mongo_db})
    loaded = load_model(tmp_path / "temperature.json", trust_pickle=False, grid_step_s=3600,
                        now_ns=time.time_ns())
    yhat, lower, upper = loaded.forecast(np.array([time.time_ns()], dtype=np.int64),
                                         np.zeros(1))
    assert lower[0] < yhat[0] < upper[0] and 15 < yhat[0] < 28  # near the data's 18-24 °C
    assert_real_plot(tmp_path / "m.png")


def test_make_demo_model_is_fast_and_loads(tmp_path: Path) -> None:
    started = time.monotonic()
    run_cli("make-demo-model", "--out", str(tmp_path / "default.json"))
    assert time.monotonic() - started < 60
    loaded = load_model(tmp_path / "default.json", trust_pickle=False, grid_step_s=3600,
                        now_ns=time.time_ns())
    assert loaded.stamp.kind == "prophet"


def test_demo_models_per_sensor_fit_what_the_simulator_sends(tmp_path: Path) -> None:
    out = run_cli("make-demo-model", "--out", str(tmp_path / "default.json"),
                  "--sensors", "temperature,humidity")
    assert out.count("demo model written") == 3
    now_ns = time.time_ns()
    for sensor in ("temperature", "humidity"):
        loaded = load_model(tmp_path / f"{sensor}.json", trust_pickle=False, grid_step_s=3600,
                            now_ns=now_ns)
        # Ten simulated devices that start now, as `make up` starts them, for six hours.
        ts_ns = np.arange(now_ns, now_ns + 6 * 3600 * 10**9, 60 * 10**9, dtype=np.int64)
        samples = []
        for seed in range(10):
            device = SyntheticSensor(sensor, random.Random(seed + 99), now_ns, spike_rate=0.0,
                                     dropout_rate=0.0, anomaly_rate=0.0)
            samples += [(t, device.sample(int(t))) for t in ts_ns]
        ts_ns = np.array([t for t, sample in samples if sample], dtype=np.int64)
        values = np.array([sample.value for _, sample in samples if sample], dtype=np.float64)
        _, lower, upper = loaded.forecast(ts_ns, values)
        inside = ((values >= lower) & (values <= upper)).mean()
        # A 95 % interval over devices that differ by their offsets: most, not all.
        assert inside > 0.85, f"{sensor}: only {inside:.0%} of normal readings inside"
    with pytest.raises(ConfigError, match="no demo model for 'accelerometer'"):
        simulator_frame("accelerometer")
