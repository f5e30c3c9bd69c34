"""Model files and the adapters that put every supported kind behind one
`Forecaster` protocol. Pure: no client library, no I/O but reading the file.

Kinds, tried in this order on the loaded object:
- `prophet`: a fitted `prophet.Prophet` (Prophet JSON from
  `prophet.serialize.model_to_json`, or a pickle/joblib of the object).
- `protocol`: any object with a `forecast(ts_ns, values)` method, or a plain
  callable with that signature (see `Forecaster`).
- `regressor`: a scikit-learn-style object with `predict(X)`, where X is
  `timestamp_features(ts_ns)`; its interval comes from `predict_interval(X)`
  returning (lower, upper), or else from `residual_quantiles_ = (low, high)`,
  residual quantiles (e.g. 10 % and 90 %) stored on the object, added to yhat.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import joblib
import numpy as np
import numpy.typing as npt
from prophet import Prophet
from prophet.serialize import model_from_json

from contracts.errors import ModelError
from contracts.results import ModelStamp
from model_worker.prophet_fast import ProphetForecaster

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Forecast = tuple[FloatArray, FloatArray, FloatArray]

# When a folder holds several files for one name, the first suffix wins.
SUFFIXES = (".json", ".joblib", ".pkl")
PICKLE_SUFFIXES = frozenset({".joblib", ".pkl"})
DEFAULT_NAME = "default"
NS_PER_HOUR = 3600 * 10**9
# 1970-01-01 was a Thursday; day-of-week 0 is Monday.
EPOCH_WEEKDAY = 3


@runtime_checkable
class Forecaster(Protocol):
    """The model protocol: one call per sensor per batch.

    `ts_ns` holds the readings' times (UTC epoch nanoseconds, int64) and
    `values` the scored values (float64), aligned. Return three float arrays of
    the same length: `yhat`, `yhat_lower`, `yhat_upper`. A plain function
    `f(ts_ns, values) -> (yhat, yhat_lower, yhat_upper)` works too.
    """

    def forecast(self, ts_ns: IntArray, values: FloatArray) -> Forecast: ...


def timestamp_features(ts_ns: IntArray) -> FloatArray:
    """The regressor kind's X, one row per reading, five columns: hours since
    the epoch, sin and cos of the hour of day (UTC, fractional), sin and cos of
    the day of week (Monday 0, fractional)."""
    hours = ts_ns / NS_PER_HOUR
    hour_of_day = np.mod(hours, 24.0)
    day_of_week = np.mod(hours / 24.0 + EPOCH_WEEKDAY, 7.0)
    return np.column_stack((
        hours,
        np.sin(2 * np.pi * hour_of_day / 24), np.cos(2 * np.pi * hour_of_day / 24),
        np.sin(2 * np.pi * day_of_week / 7), np.cos(2 * np.pi * day_of_week / 7),
    ))


class RegressorForecaster:
    def __init__(self, regressor: Any) -> None:
        self.regressor = regressor
        quantiles = getattr(regressor, "residual_quantiles_", None)
        if not hasattr(regressor, "predict_interval") and quantiles is None:
            raise ModelError("a regressor needs predict_interval(X) or residual_quantiles_ "
                             "(low, high) for its interval")
        self.quantiles = None if quantiles is None else (float(quantiles[0]),
                                                         float(quantiles[1]))

    def forecast(self, ts_ns: IntArray, values: FloatArray) -> Forecast:
        features = timestamp_features(ts_ns)
        yhat = np.asarray(self.regressor.predict(features), dtype=np.float64).reshape(-1)
        if self.quantiles is None:
            lower, upper = self.regressor.predict_interval(features)
            return yhat, np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        return yhat, yhat + self.quantiles[0], yhat + self.quantiles[1]


class CallableForecaster:
    def __init__(self, function: Callable[[IntArray, FloatArray], Forecast]) -> None:
        self.function = function

    def forecast(self, ts_ns: IntArray, values: FloatArray) -> Forecast:
        return self.function(ts_ns, values)


@dataclass(slots=True, frozen=True)
class LoadedModel:
    stamp: ModelStamp
    forecaster: Forecaster
    path: Path

    def forecast(self, ts_ns: IntArray, values: FloatArray) -> Forecast:
        """Calls the model and checks what it returned: a broken model must
        fail here, loudly, not write garbage results."""
        try:
            yhat, lower, upper = (np.asarray(a, dtype=np.float64).reshape(-1)
                                  for a in self.forecaster.forecast(ts_ns, values))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"model {self.stamp.name} failed to score: {exc!r}") from exc
        if not (len(yhat) == len(lower) == len(upper) == len(ts_ns)):
            raise ModelError(f"model {self.stamp.name} returned {len(yhat)}/{len(lower)}/"
                             f"{len(upper)} values for {len(ts_ns)} readings")
        return yhat, lower, upper


def adapt(obj: Any, grid_step_s: int) -> tuple[str, Forecaster]:
    """(kind, forecaster) for a loaded object, or ModelError."""
    if isinstance(obj, Prophet):
        return "prophet", ProphetForecaster(obj, grid_step_s)
    if isinstance(obj, Forecaster):
        return "protocol", obj
    if hasattr(obj, "predict"):
        return "regressor", RegressorForecaster(obj)
    if callable(obj):
        return "protocol", CallableForecaster(obj)
    raise ModelError(f"{type(obj).__name__} is no model: expected a Prophet, an object with "
                     "forecast(ts_ns, values) or predict(X), or a callable")


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def load_model(path: Path, *, trust_pickle: bool, grid_step_s: int,
               now_ns: int) -> LoadedModel:
    """Load one model file. Pickle and joblib files run arbitrary code while
    loading; with `trust_pickle` False only Prophet JSON is read."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelError(f"{path.name}: unsupported model file type (use {', '.join(SUFFIXES)})")
    if suffix in PICKLE_SUFFIXES and not trust_pickle:
        raise ModelError(f"{path.name}: pickle/joblib model files are refused because "
                         "MODEL_TRUST_PICKLE is false; save the model as Prophet JSON")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path.name}: cannot read: {exc}") from exc
    try:
        if suffix == ".json":
            obj: Any = model_from_json(data.decode("utf-8"))
        elif suffix == ".joblib":
            obj = joblib.load(io.BytesIO(data))
        else:
            obj = pickle.loads(data)
    except Exception as exc:  # whatever a broken file raises, it is a load failure
        raise ModelError(f"{path.name}: cannot load: {exc!r}") from exc
    kind, forecaster = adapt(obj, grid_step_s)
    stamp = ModelStamp(name=path.stem, kind=kind, sha256_12=file_digest(data),
                       loaded_at_ns=now_ns)
    return LoadedModel(stamp=stamp, forecaster=forecaster, path=path)


def model_files(root: Path) -> dict[str, Path]:
    """name -> file for a MODEL_PATH: a single file serves as the default for
    every sensor; a folder maps `{sensor}.*` and `default.*`."""
    if root.is_file():
        return {DEFAULT_NAME: root}
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for suffix in reversed(SUFFIXES):
        for path in sorted(root.glob(f"*{suffix}")):
            if path.is_file() and not path.name.startswith("."):
                found[path.stem] = path
    return found
