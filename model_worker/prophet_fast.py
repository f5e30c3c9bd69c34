"""Prophet at stream speed, interval kept.

Prophet's `predict` spends nearly all its time drawing 1000 trend and noise
samples per row for the interval. Here the two halves are split:

- `yhat` is computed exactly and vectorised: for linear or flat growth with
  plain (unconditional) seasonalities, straight from the fitted parameters with
  numpy (the same formulas as `Prophet.predict_trend` and
  `predict_seasonal_components`); for anything else (holidays, logistic growth)
  through Prophet's own `predict` with `uncertainty_samples=0`.
- The interval's half-widths (`yhat - yhat_lower`, `yhat_upper - yhat`) depend
  on time only: observation noise (constant) plus trend-change uncertainty that
  grows with the distance past the training end (and, for multiplicative
  seasonality, the seasonal factor). They are sampled by Prophet itself, with
  its full sampling, once per grid step (default one hour) and cached; each
  reading gets the half-widths interpolated linearly between the two grid
  points around its time.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import numpy.typing as npt
import pandas as pd
from prophet import Prophet

from contracts.errors import ModelError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
NS_PER_DAY = 86_400 * 10**9
# Bounded so a replay spanning years cannot grow the cache without limit.
MAX_GRID_POINTS = 50_000


def _has_numpy_path(model: Prophet) -> bool:
    return (model.growth in ("linear", "flat") and not model.extra_regressors
            and model.holidays is None and model.country_holidays is None
            and all(p["condition_name"] is None for p in model.seasonalities.values()))


class ProphetForecaster:
    """A fitted Prophet behind the `Forecaster` protocol (see `models.py`)."""

    def __init__(self, model: Prophet, grid_step_s: int = 3600) -> None:
        if model.history is None or model.params is None:
            raise ModelError("the Prophet model has not been fitted")
        if model.extra_regressors:
            raise ModelError("Prophet models with extra regressors are not supported: "
                             f"a reading carries no {sorted(model.extra_regressors)}")
        if any(p["condition_name"] is not None for p in model.seasonalities.values()):
            raise ModelError("Prophet models with conditional seasonalities are not supported")
        self.model = model
        self.grid_step_ns = grid_step_s * 10**9
        self.numpy_path = _has_numpy_path(model)
        self._deterministic = copy.deepcopy(model)
        self._deterministic.uncertainty_samples = 0
        self._half_widths: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._prepare_params()

    def _prepare_params(self) -> None:
        m = self.model
        self._start_ns = int(pd.Timestamp(m.start).value)
        self._t_scale_ns = float(pd.Timedelta(m.t_scale).value)
        self._k = float(np.nanmean(m.params["k"]))
        self._m = float(np.nanmean(m.params["m"]))
        self._deltas = np.nanmean(m.params["delta"], axis=0)
        self._changepoints_t = np.asarray(m.changepoints_t, dtype=np.float64)
        assert m.y_scale is not None and m.y_min is not None  # set by fit
        self._y_scale = float(m.y_scale)
        self._floor = float(m.y_min) if m.scaling == "minmax" else 0.0
        beta = np.nanmean(m.params["beta"], axis=0)
        self._seasonal_terms: list[tuple[float, int, str, FloatArray]] = []
        column = 0
        for props in m.seasonalities.values():
            width = 2 * int(props["fourier_order"])
            self._seasonal_terms.append((float(props["period"]), int(props["fourier_order"]),
                                         props["mode"], beta[column:column + width]))
            column += width

    def forecast(self, ts_ns: IntArray, values: FloatArray) -> tuple[
            FloatArray, FloatArray, FloatArray]:
        yhat = self.yhat(ts_ns)
        lower_width, upper_width = self.half_widths(ts_ns)
        return yhat, yhat - lower_width, yhat + upper_width

    def yhat(self, ts_ns: IntArray) -> FloatArray:
        if self.numpy_path:
            return self._yhat_numpy(ts_ns)
        return self._yhat_prophet(ts_ns)

    def _yhat_numpy(self, ts_ns: IntArray) -> FloatArray:
        t = (ts_ns - self._start_ns) / self._t_scale_ns
        if self.model.growth == "linear":
            deltas_t = (self._changepoints_t[None, :] <= t[:, None]) * self._deltas
            k_t = deltas_t.sum(axis=1) + self._k
            m_t = (deltas_t * -self._changepoints_t).sum(axis=1) + self._m
            trend = (k_t * t + m_t) * self._y_scale + self._floor
        else:
            trend = np.full(t.shape, self._m * self._y_scale + self._floor)
        additive = np.zeros_like(t)
        multiplicative = np.zeros_like(t)
        days = ts_ns / NS_PER_DAY
        for period, order, mode, beta in self._seasonal_terms:
            orders = np.arange(1, order + 1, dtype=np.float64)
            angle = (2.0 * np.pi / period) * days[:, None] * orders[None, :]
            component = np.sin(angle) @ beta[0::2] + np.cos(angle) @ beta[1::2]
            if mode == "additive":
                additive += component * self._y_scale
            else:
                multiplicative += component
        return trend * (1.0 + multiplicative) + additive

    def _yhat_prophet(self, ts_ns: IntArray) -> FloatArray:
        # Prophet sorts its input by ds; `order` puts the rows back.
        order = np.argsort(ts_ns, kind="mergesort")
        frame = self._deterministic.predict(self._frame(ts_ns[order]))
        out = np.empty(len(ts_ns))
        out[order] = frame["yhat"].to_numpy()
        return out

    def _frame(self, ts_ns: IntArray) -> pd.DataFrame:
        frame = pd.DataFrame({"ds": pd.to_datetime(ts_ns, unit="ns")})
        if self.model.growth == "logistic":
            history = self.model.history
            assert history is not None  # checked in __init__
            frame["cap"] = float(history["cap"].iloc[-1])
            if self.model.logistic_floor:
                frame["floor"] = float(history["floor"].iloc[-1])
        return frame

    def half_widths(self, ts_ns: IntArray) -> tuple[FloatArray, FloatArray]:
        """Prophet's own sampled half-widths at the grid points around each
        time, interpolated linearly."""
        step = self.grid_step_ns
        cell = ts_ns // step
        points = np.unique(np.concatenate((cell, cell + 1)))
        with self._lock:
            self._sample_missing(points)
            table = self._half_widths
            lower = np.array([table[int(p)][0] for p in points])
            upper = np.array([table[int(p)][1] for p in points])
        index = np.searchsorted(points, cell)
        frac = (ts_ns - cell * step) / step
        return (lower[index] + (lower[index + 1] - lower[index]) * frac,
                upper[index] + (upper[index + 1] - upper[index]) * frac)

    def _sample_missing(self, points: IntArray) -> None:
        missing = [int(p) for p in points if int(p) not in self._half_widths]
        if not missing:
            return
        if len(self._half_widths) + len(missing) > MAX_GRID_POINTS:
            self._half_widths.clear()
        grid_ns = np.asarray(missing, dtype=np.int64) * self.grid_step_ns
        frame = self.model.predict(self._frame(grid_ns))  # sorted, as `missing` is
        yhat = frame["yhat"].to_numpy()
        lower = yhat - frame["yhat_lower"].to_numpy()
        upper = frame["yhat_upper"].to_numpy() - yhat
        for point, low, up in zip(missing, lower, upper, strict=True):
            self._half_widths[point] = (float(low), float(up))
