"""Vectorised group-by over one batch: per (field series, window start) the
count, mean, m2, min, max, first and last time and late count, reduced with
numpy `reduceat` instead of a Python loop per reading.

Per-group moments use two passes (mean, then squared deviations from it), so
values near 1e9 with a small spread keep their variance; groups then merge into
the running state with the parallel formula of `contracts.windows.Moments`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


@dataclass(slots=True)
class SortedEntries:
    """One entry per (accepted reading, field), sorted by field series, then
    event time, then arrival (a stable sort keeps arrival order among ties)."""

    field_idx: Ints
    ts_ns: Ints
    values: Floats
    stream_before_ns: Ints

    @classmethod
    def sort(cls, field_idx: Ints, ts_ns: Ints, values: Floats,
             stream_before_ns: Ints) -> SortedEntries:
        order = np.lexsort((ts_ns, field_idx))
        return cls(field_idx[order], ts_ns[order], values[order], stream_before_ns[order])

    def __len__(self) -> int:
        return int(self.field_idx.size)


@dataclass(slots=True)
class GroupMoments:
    """Reduced groups, aligned by index; `start_ns` is the window start (0 for
    whole-series groups)."""

    field_idx: Ints
    start_ns: Ints
    count: Ints
    mean: Floats
    m2: Floats
    min: Floats
    max: Floats
    first_ts_ns: Ints
    last_ts_ns: Ints
    late: Ints
    last_value: Floats

    def __len__(self) -> int:
        return int(self.field_idx.size)


def _reduce(entries: SortedEntries, start_ns: Ints, late: Bools) -> GroupMoments:
    fidx, ts, x = entries.field_idx, entries.ts_ns, entries.values
    boundary = np.empty(fidx.size, dtype=np.bool_)
    boundary[0] = True
    np.not_equal(fidx[1:], fidx[:-1], out=boundary[1:])
    boundary[1:] |= start_ns[1:] != start_ns[:-1]
    heads = np.flatnonzero(boundary)
    tails = np.append(heads[1:], fidx.size) - 1
    count = np.diff(np.append(heads, fidx.size)).astype(np.int64)
    low = np.minimum.reduceat(x, heads)
    high = np.maximum.reduceat(x, heads)
    # Shifted by each group's first value: near 1e9 the differences are exact
    # and small, so neither the mean's sum nor the squares lose the spread.
    shift = x[heads]
    shifted = x - np.repeat(shift, count)
    shifted_mean = np.add.reduceat(shifted, heads) / count
    deviation = shifted - np.repeat(shifted_mean, count)
    # A constant group has exactly its value as mean and no spread.
    mean = np.where(low == high, low, shift + shifted_mean)
    return GroupMoments(
        field_idx=fidx[heads], start_ns=start_ns[heads], count=count, mean=mean,
        m2=np.add.reduceat(deviation * deviation, heads), min=low, max=high,
        # Sorted by time within a group: the first and last entries bound it.
        first_ts_ns=ts[heads], last_ts_ns=ts[tails],
        late=np.add.reduceat(late.astype(np.int64), heads), last_value=x[tails],
    )


def reduce_windows(entries: SortedEntries, size_ns: int, grace_ns: int) -> GroupMoments:
    """Groups per (field series, window of `size_ns`). Entries sorted by time
    within a series are also sorted by window start, so one sort serves every
    size. A reading is late for its window when its series' stream time had
    already passed the window's end plus grace when it arrived."""
    start = entries.ts_ns - entries.ts_ns % size_ns
    late = entries.stream_before_ns >= start + size_ns + grace_ns
    return _reduce(entries, start, late)


def reduce_series(entries: SortedEntries) -> GroupMoments:
    """Groups per field series: the batch's contribution to running statistics;
    `last_value`/`last_ts_ns` are the latest by event time (ties: latest arrival)."""
    zeros = np.zeros(len(entries), dtype=np.int64)
    return _reduce(entries, zeros, np.zeros(len(entries), dtype=np.bool_))


def stream_before(series_idx: Ints, ts_ns: Ints, initial_ns: Ints) -> Ints:
    """For each reading (in arrival order), its series' stream time just before
    it arrived: the max of the stored stream time and the event times of the
    series' earlier readings in this batch."""
    order = np.argsort(series_idx, kind="stable")
    sorted_series = series_idx[order]
    sorted_ts = ts_ns[order]
    result_sorted = np.empty_like(sorted_ts)
    heads = np.flatnonzero(np.r_[True, sorted_series[1:] != sorted_series[:-1]])
    tails = np.append(heads[1:], sorted_series.size)
    for head, tail in zip(heads.tolist(), tails.tolist(), strict=True):
        running = np.maximum.accumulate(sorted_ts[head:tail])
        result_sorted[head] = initial_ns[sorted_series[head]]
        result_sorted[head + 1:tail] = np.maximum(running[:-1], result_sorted[head])
    result = np.empty_like(result_sorted)
    result[order] = result_sorted
    return result
