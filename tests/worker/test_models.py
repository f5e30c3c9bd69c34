"""Pure tests of model loading, the adapters, the registry and the scoring step."""

from __future__ import annotations

import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from prophet.serialize import model_from_json
from sklearn.linear_model import LinearRegression

from contracts.errors import ModelError
from contracts.events import Reading
from contracts.results import ModelStamp
from model_worker.models import LoadedModel, load_model, timestamp_features
from model_worker.registry import ModelRegistry
from model_worker.scoring import KafkaRecord, decode_records, score_batch

NOW_NS = time.time_ns()
HOUR_NS = 3600 * 10**9


def batch_times(count: int = 3000) -> np.ndarray:
    """Times from a day before the training end to a day after, unsorted."""
    rng = np.random.default_rng(3)
    return NOW_NS + rng.integers(-24 * HOUR_NS, 24 * HOUR_NS, count, dtype=np.int64)


def test_prophet_matches_direct_predict(prophet_models: dict[str, Path]) -> None:
    loaded = load_model(prophet_models["a"], trust_pickle=False, grid_step_s=3600, now_ns=NOW_NS)
    ts = batch_times()
    yhat, lower, upper = loaded.forecast(ts, np.zeros(len(ts)))
    model = model_from_json(prophet_models["a"].read_text())
    direct = model.predict(pd.DataFrame({"ds": pd.to_datetime(np.sort(ts), unit="ns")}))
    order = np.argsort(ts, kind="mergesort")
    # yhat is the same arithmetic as Prophet's: equal up to float rounding.
    np.testing.assert_allclose(yhat[order], direct["yhat"], rtol=1e-9, atol=1e-9)
    # Prophet's own bounds are Monte Carlo quantiles of 1000 draws, so two calls of
    # predict already differ by a few % of the width; the cached, interpolated
    # bounds must stay within that noise: median error < 5 %, worst < 20 % of width.
    width = (direct["yhat_upper"] - direct["yhat_lower"]).to_numpy()
    error = np.maximum(np.abs(lower[order] - direct["yhat_lower"].to_numpy()),
                       np.abs(upper[order] - direct["yhat_upper"].to_numpy())) / width
    assert np.median(error) < 0.05
    assert error.max() < 0.20
    assert loaded.stamp.kind == "prophet" and len(loaded.stamp.sha256_12) == 12


def test_prophet_path_for_models_numpy_does_not_cover(prophet_models: dict[str, Path]) -> None:
    loaded = load_model(prophet_models["a"], trust_pickle=False, grid_step_s=3600, now_ns=NOW_NS)
    ts = batch_times(500)
    fast = loaded.forecaster.yhat(ts)  # type: ignore[attr-defined]
    loaded.forecaster.numpy_path = False  # type: ignore[attr-defined]
    np.testing.assert_allclose(loaded.forecaster.yhat(ts), fast, rtol=1e-9)  # type: ignore[attr-defined]


def test_regressor_with_residual_quantiles(tmp_path: Path) -> None:
    ts = batch_times(400)
    target = 20 + 3 * timestamp_features(ts)[:, 1]
    regressor = LinearRegression().fit(timestamp_features(ts), target)
    regressor.residual_quantiles_ = (-0.5, 0.7)
    joblib.dump(regressor, tmp_path / "temperature.joblib")
    loaded = load_model(tmp_path / "temperature.joblib", trust_pickle=True, grid_step_s=3600,
                        now_ns=NOW_NS)
    yhat, lower, upper = loaded.forecast(ts, target)
    direct = regressor.predict(timestamp_features(ts))
    np.testing.assert_allclose(yhat, direct, rtol=1e-12)  # same call, same numbers
    np.testing.assert_allclose(lower, direct - 0.5)
    np.testing.assert_allclose(upper, direct + 0.7)
    assert loaded.stamp.kind == "regressor" and loaded.stamp.name == "temperature"


def test_regressor_without_interval_is_refused(tmp_path: Path) -> None:
    ts = batch_times(50)
    joblib.dump(LinearRegression().fit(timestamp_features(ts), np.ones(50)), tmp_path / "x.joblib")
    with pytest.raises(ModelError, match="interval"):
        load_model(tmp_path / "x.joblib", trust_pickle=True, grid_step_s=3600, now_ns=NOW_NS)


class Persistence:
    """A protocol model: yhat is the batch mean, the interval +-1."""

    def forecast(self, ts_ns: Any, values: Any) -> Any:
        yhat = np.full(len(values), values.mean())
        return yhat, yhat - 1, yhat + 1


def test_protocol_object_and_callable(tmp_path: Path) -> None:
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(Persistence()))
    loaded = load_model(tmp_path / "obj.pkl", trust_pickle=True, grid_step_s=3600, now_ns=NOW_NS)
    values = np.array([1.0, 2.0, 6.0])
    yhat, lower, upper = loaded.forecast(np.arange(3, dtype=np.int64), values)
    assert loaded.stamp.kind == "protocol"
    assert (yhat.tolist(), lower.tolist(), upper.tolist()) == ([3.0] * 3, [2.0] * 3, [4.0] * 3)
    joblib.dump(np.negative, tmp_path / "fn.joblib")  # a callable that fails on (ts_ns, values)
    broken = load_model(tmp_path / "fn.joblib", trust_pickle=True, grid_step_s=3600, now_ns=NOW_NS)
    with pytest.raises(ModelError):
        broken.forecast(np.arange(3, dtype=np.int64), values)


def test_pickle_refused_when_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(Persistence()))
    with pytest.raises(ModelError, match="MODEL_TRUST_PICKLE"):
        load_model(tmp_path / "obj.pkl", trust_pickle=False, grid_step_s=3600, now_ns=NOW_NS)


def test_registry_swaps_and_keeps_old_model_on_corrupt_file(
        tmp_path: Path, prophet_models: dict[str, Path]) -> None:
    shutil.copy(prophet_models["a"], tmp_path / "default.json")
    registry = ModelRegistry(tmp_path, trust_pickle=False, grid_step_s=3600)
    assert registry.refresh()
    first = registry.current()["default"].stamp
    (tmp_path / "default.json").write_text('{"not": "a model"')
    assert not registry.refresh()
    assert registry.current()["default"].stamp == first
    assert [f.path for f in registry.failures()] == [str(tmp_path / "default.json")]
    shutil.copy(prophet_models["b"], tmp_path / "default.json")
    assert registry.refresh()
    assert registry.current()["default"].stamp.sha256_12 != first.sha256_12
    assert registry.failures() == []
    shutil.copy(prophet_models["a"], tmp_path / "humidity.json")
    registry.refresh()
    models = registry.current()
    assert registry.for_sensor(models, "humidity") is models["humidity"]
    assert registry.for_sensor(models, "temperature") is models["default"]
    (tmp_path / "default.json").unlink()
    registry.refresh()
    assert registry.for_sensor(registry.current(), "temperature") is None


def reading(i: int, **kwargs: object) -> Reading:
    fields = {"event_id": f"e{i}", "device_id": "d1", "sensor": "temperature",
              "ts_ns": NOW_NS + i * 10**9, **kwargs}
    return Reading(**fields)  # type: ignore[arg-type]


def test_decode_sends_bad_records_to_dead_letters() -> None:
    good = reading(1, value=20.0).to_json()
    axes = reading(2, sensor="accel", values={"x": 3.0, "y": 4.0}).to_json()
    records = [KafkaRecord(good, 0, 10), KafkaRecord(b"{not json", 0, 11),
               KafkaRecord(None, 1, 5), KafkaRecord(reading(3).to_json(), 1, 6),
               KafkaRecord(axes, 2, 1),
               KafkaRecord(reading(4, device_id="a/b", value=1.0).to_json(), 2, 2)]
    batch, dead = decode_records("readings", records, {})
    assert [r.event_id for r in batch.readings] == ["e1", "e2"]
    assert batch.offsets == [10, 1] and batch.partitions == [0, 2]
    assert [(d.record.partition, d.record.offset) for d in dead] == [(0, 11), (1, 5), (1, 6),
                                                                      (2, 2)]
    assert all(d.reason and d.error for d in dead)


def test_score_batch_fields_passthrough_and_one_call_per_model() -> None:
    calls: list[int] = []

    class Recorder(Persistence):
        def forecast(self, ts_ns: Any, values: Any) -> Any:
            calls.append(len(values))
            return values * 0 + 5.0, values * 0 + 4.0, values * 0 + 6.0

    model = LoadedModel(ModelStamp("default", "protocol", "0" * 12, NOW_NS), Recorder(),
                        Path("default.pkl"))
    readings = [reading(1, value=5.5), reading(2, sensor="accel", values={"x": 3.0, "z": 4.0}),
                reading(3, sensor="accel", values={"x": 30.0, "z": 40.0}),
                reading(4, sensor="gyro", values={"x": 1.0, "z": 2.0}),
                reading(5, sensor="unknown", value=1.0)]
    resolve = {"temperature": model, "accel": model, "gyro": model}.get
    outcome = score_batch(readings, resolve, {"gyro": "z"}, NOW_NS)
    assert calls == [4]
    by_id = {r.event_id: r for r in outcome.results}
    assert [r.event_id for r in outcome.results] == ["e1", "e2", "e3", "e4", "e5"]
    assert (by_id["e2"].field, by_id["e2"].value, by_id["e2"].anomaly) == ("magnitude", 5.0, False)
    assert (by_id["e3"].value, by_id["e3"].anomaly, by_id["e3"].residual) == (50.0, True, 45.0)
    assert (by_id["e4"].field, by_id["e4"].value) == ("z", 2.0)
    assert by_id["e5"].model is None and by_id["e5"].to_dict()["model"] is None
    assert outcome.unscored == {("unknown", "no_model"): 1}
