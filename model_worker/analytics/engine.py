"""The pure analytics step: readings in, closed windows and statistics updates
out. No client library; the stage does the I/O.

Semantics, per (device, sensor) series:
- stream time = the latest event time accepted so far;
- a reading is accepted while stream time < end of its smallest-size window +
  grace + allowed lateness, else it is too late: counted and returned, not applied;
- a window closes (is emitted) once stream time >= its end + grace, or when the
  series has been idle on the wall clock for the idle timeout; a closed window
  that receives more readings is emitted again with revision + 1;
- a reading whose event id was already applied is a duplicate and is skipped;
  a reading at an offset at or below its partition's applied offset is a replay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from contracts.errors import ConfigError
from contracts.events import NS_PER_MS, NS_PER_S, Reading
from contracts.settings import Settings
from contracts.windows import MAGNITUDE_FIELD, SCALAR_FIELD, Moments, WindowRecord
from model_worker.analytics.reduce import (
    GroupMoments,
    SortedEntries,
    reduce_series,
    reduce_windows,
    stream_before,
)
from model_worker.analytics.state import (
    FieldState,
    PartitionState,
    SeriesState,
    Window,
    event_hash,
)


@dataclass(slots=True, frozen=True)
class WindowPolicy:
    sizes_s: tuple[int, ...]
    grace_ns: int
    lateness_ns: int
    idle_ns: int
    points_max: int = 0  # readings kept in each smallest-size window (see Window.points)
    children: bool = False  # larger windows keep their next smaller windows' moments

    def __post_init__(self) -> None:
        if not self.sizes_s or min(self.sizes_s) <= 0:
            raise ConfigError(f"window sizes must be positive seconds, got {self.sizes_s}")
        # Larger windows must be unions of base windows: then a reading accepted
        # for its base window is also within lateness for every larger one.
        if any(size % self.sizes_s[0] for size in self.sizes_s):
            raise ConfigError(f"window sizes {self.sizes_s} must be multiples of the smallest")

    @classmethod
    def from_settings(cls, settings: Settings) -> WindowPolicy:
        return cls(tuple(sorted(set(settings.analytics_window_sizes_s))),
                   settings.analytics_grace_ms * NS_PER_MS,
                   settings.analytics_allowed_lateness_s * NS_PER_S,
                   int(settings.analytics_idle_timeout_s * NS_PER_S),
                   settings.analytics_window_points_max, settings.analytics_window_children)

    @property
    def base_ns(self) -> int:
        return self.sizes_s[0] * NS_PER_S


@dataclass(slots=True)
class Emissions:
    """What a step produced: windows to write (with why each closed), series
    whose statistics changed, partitions whose state must be saved, and counts."""

    windows: list[WindowRecord] = field(default_factory=list)
    closed_by: list[str] = field(default_factory=list)
    stats: list[FieldState] = field(default_factory=list)
    partitions: set[int] = field(default_factory=set)
    too_late: list[Reading] = field(default_factory=list)
    duplicates: int = 0
    replayed: int = 0
    invalid: int = 0


def reading_fields(reading: Reading) -> list[tuple[str, float]]:
    fields: list[tuple[str, float]] = []
    if reading.value is not None:
        fields.append((SCALAR_FIELD, reading.value))
    if reading.values:
        fields.extend(reading.values.items())
        fields.append((MAGNITUDE_FIELD, math.sqrt(math.fsum(v * v for v in
                                                            reading.values.values()))))
    return fields


class AnalyticsEngine:
    def __init__(self, policy: WindowPolicy) -> None:
        self.policy = policy
        self.partitions: dict[int, PartitionState] = {}

    def partition(self, partition: int) -> PartitionState:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState(partition)
        return state

    def apply(self, readings: Sequence[Reading], partitions: Sequence[int],
              offsets: Sequence[int], now_ns: int) -> Emissions:
        out = Emissions()
        base = self.policy.base_ns
        series_list: list[SeriesState] = []
        series_pos: dict[tuple[int, str, str], int] = {}
        fields_list: list[FieldState] = []
        field_pos: dict[tuple[int, str], int] = {}
        cand_series: list[int] = []
        cand_ts: list[int] = []
        cand_hash: list[int] = []
        cand_reading: list[Reading] = []
        entry_field: list[int] = []
        entry_cand: list[int] = []
        entry_value: list[float] = []
        for reading, part, offset in zip(readings, partitions, offsets, strict=True):
            pstate = self.partition(part)
            if offset <= pstate.applied_offset:
                out.replayed += 1
                continue
            pstate.applied_offset = offset
            out.partitions.add(part)
            local_key = (part, reading.device_id, reading.sensor)
            spos = series_pos.get(local_key)
            if spos is None:
                key = (reading.device_id, reading.sensor)
                series = pstate.series.get(key)
                if series is None:
                    series = pstate.series[key] = SeriesState(*key, part)
                spos = series_pos[local_key] = len(series_list)
                series_list.append(series)
            else:
                series = series_list[spos]
            ts = reading.ts_ns
            digest = event_hash(reading.event_id)
            seen = series.seen.setdefault(ts - ts % base, set())
            if digest in seen:
                out.duplicates += 1
                continue
            seen.add(digest)
            cand = len(cand_ts)
            cand_series.append(spos)
            cand_ts.append(ts)
            cand_hash.append(digest)
            cand_reading.append(reading)
            for name, value in reading_fields(reading):
                fpos = field_pos.setdefault((spos, name), len(fields_list))
                if fpos == len(fields_list):
                    fields_list.append(series.fields.get(name) or series.fields.setdefault(
                        name, FieldState(reading.device_id, reading.sensor, name)))
                entry_field.append(fpos)
                entry_cand.append(cand)
                entry_value.append(value)
        if not cand_ts:
            return out
        sidx = np.array(cand_series, dtype=np.int64)
        ts_arr = np.array(cand_ts, dtype=np.int64)
        initial = np.array([s.stream_ns for s in series_list], dtype=np.int64)
        before = stream_before(sidx, ts_arr, initial)
        horizon = ts_arr - ts_arr % base + base + self.policy.grace_ns + self.policy.lateness_ns
        accepted = before < horizon
        for cand in np.flatnonzero(~accepted).tolist():
            series = series_list[cand_series[cand]]
            series.seen[cand_ts[cand] - cand_ts[cand] % base].discard(cand_hash[cand])
            out.too_late.append(cand_reading[cand])
        newest = initial.copy()
        np.maximum.at(newest, sidx[accepted], ts_arr[accepted])
        for series, stream_ns in zip(series_list, newest.tolist(), strict=True):
            series.stream_ns = stream_ns
            series.last_wall_ns = now_ns
        self._merge(out, fields_list, entry_field, entry_cand, entry_value, accepted, ts_arr,
                    before)
        for series in series_list:
            self._close(series, out)
        return out

    def _merge(self, out: Emissions, fields_list: list[FieldState], entry_field: list[int],
               entry_cand: list[int], entry_value: list[float], accepted: np.ndarray,
               ts_arr: np.ndarray, before: np.ndarray) -> None:
        cand = np.array(entry_cand, dtype=np.int64)
        values = np.array(entry_value, dtype=np.float64)
        finite = np.isfinite(values)
        out.invalid += int(np.count_nonzero(~finite & accepted[cand]))
        keep = finite & accepted[cand]
        if not keep.any():
            return
        cand = cand[keep]
        entries = SortedEntries.sort(np.array(entry_field, dtype=np.int64)[keep], ts_arr[cand],
                                     values[keep], before[cand])
        by_size = []
        for size_s in self.policy.sizes_s:
            groups = reduce_windows(entries, size_s * NS_PER_S, self.policy.grace_ns)
            self._merge_windows(fields_list, groups, size_s)
            by_size.append(groups)
        if self.policy.points_max:
            self._merge_points(fields_list, entries)
        if self.policy.children:
            self._merge_children(fields_list, by_size)
        groups = reduce_series(entries)
        for fpos, count, mean, m2, lo, hi, first, last, last_value in zip(
                groups.field_idx.tolist(), groups.count.tolist(), groups.mean.tolist(),
                groups.m2.tolist(), groups.min.tolist(), groups.max.tolist(),
                groups.first_ts_ns.tolist(), groups.last_ts_ns.tolist(),
                groups.last_value.tolist(), strict=True):
            state = fields_list[fpos]
            if state.stats.count == 0 or first < state.first_ts_ns:
                state.first_ts_ns = first
            state.stats.merge(Moments(count, mean, m2, lo, hi))
            if last >= state.last_ts_ns:
                state.last_ts_ns, state.last_value = last, last_value
            out.stats.append(state)

    def _merge_windows(self, fields_list: list[FieldState], groups: GroupMoments,
                       size_s: int) -> None:
        sizes = self.policy.sizes_s
        detail = size_s == sizes[0] and self.policy.points_max > 0
        child_s = max((s for s in sizes if s < size_s), default=0)
        nested = self.policy.children and child_s > 0 and size_s % child_s == 0
        for fpos, start, count, mean, m2, lo, hi, first, last, late in zip(
                groups.field_idx.tolist(), groups.start_ns.tolist(), groups.count.tolist(),
                groups.mean.tolist(), groups.m2.tolist(), groups.min.tolist(),
                groups.max.tolist(), groups.first_ts_ns.tolist(), groups.last_ts_ns.tolist(),
                groups.late.tolist(), strict=True):
            by_start = fields_list[fpos].windows.setdefault(size_s, {})
            moments = Moments(count, mean, m2, lo, hi)
            window = by_start.get(start)
            if window is None:
                # New windows start with empty detail; reloaded ones keep None.
                by_start[start] = Window(size_s, start, moments, first, last, late,
                                         points=[] if detail else None,
                                         children={} if nested else None,
                                         children_size_s=child_s if nested else 0)
                continue
            window.moments.merge(moments)
            window.first_ts_ns = min(window.first_ts_ns, first)
            window.last_ts_ns = max(window.last_ts_ns, last)
            window.late_count += late
            window.dirty = True

    def _merge_points(self, fields_list: list[FieldState], entries: SortedEntries) -> None:
        """Append the batch's readings to their smallest-size windows; a window
        over the cap keeps none."""
        base, cap = self.policy.base_ns, self.policy.points_max
        fidx, ts, values = entries.field_idx, entries.ts_ns, entries.values
        start = ts - ts % base
        # Entries are sorted by field then time, so each window is one run.
        heads = np.flatnonzero(np.r_[True, (fidx[1:] != fidx[:-1]) | (start[1:] != start[:-1])])
        tails = np.append(heads[1:], fidx.size)
        ts_list, value_list = ts.tolist(), values.tolist()
        for head, tail in zip(heads.tolist(), tails.tolist(), strict=True):
            window = fields_list[int(fidx[head])].windows[self.policy.sizes_s[0]][int(start[head])]
            if window.points is None:
                continue
            window.points.extend(zip(ts_list[head:tail], value_list[head:tail], strict=True))
            if len(window.points) > cap:
                window.points = None

    def _merge_children(self, fields_list: list[FieldState], by_size: list[GroupMoments]) -> None:
        """Merge each batch group of one size into its window of the next larger
        size, when that size is a multiple of it (else that size keeps none)."""
        sizes = self.policy.sizes_s
        for level in range(1, len(sizes)):
            if sizes[level] % sizes[level - 1]:
                continue
            step = sizes[level] * NS_PER_S
            groups = by_size[level - 1]
            for fpos, start, count, mean, m2, lo, hi in zip(
                    groups.field_idx.tolist(), groups.start_ns.tolist(), groups.count.tolist(),
                    groups.mean.tolist(), groups.m2.tolist(), groups.min.tolist(),
                    groups.max.tolist(), strict=True):
                parent = fields_list[fpos].windows[sizes[level]][start - start % step]
                if parent.children is not None:
                    parent.children.setdefault(start, Moments()).merge(
                        Moments(count, mean, m2, lo, hi))

    def _close(self, series: SeriesState, out: Emissions) -> None:
        """Emit windows the stream time closed; forget windows and event ids
        beyond the allowed lateness (nothing can change them any more)."""
        stream, grace, lateness = series.stream_ns, self.policy.grace_ns, self.policy.lateness_ns
        for state in series.fields.values():
            for by_start in state.windows.values():
                for start, window in list(by_start.items()):
                    if window.dirty and stream >= window.end_ns + grace:
                        _emit(state, window, "stream", out)
                    if not window.dirty and stream >= window.end_ns + grace + lateness:
                        del by_start[start]
        base = self.policy.base_ns
        for start in [s for s in series.seen if stream >= s + base + grace + lateness]:
            del series.seen[start]

    def idle_close(self, now_ns: int) -> Emissions:
        """Emit the changed windows of every series idle for the idle timeout,
        so the last window of a sensor that stopped is not held back forever."""
        out = Emissions()
        for pstate in self.partitions.values():
            for series in pstate.series.values():
                if now_ns - series.last_wall_ns < self.policy.idle_ns:
                    continue
                for state in series.fields.values():
                    for by_start in state.windows.values():
                        for window in by_start.values():
                            if window.dirty:
                                _emit(state, window, "idle", out)
                                out.partitions.add(pstate.partition)
        return out

    def state_size(self) -> tuple[int, int, int]:
        """(series, windows held, event-id hashes held)."""
        series = [s for p in self.partitions.values() for s in p.series.values()]
        windows = sum(len(by_start) for s in series for f in s.fields.values()
                      for by_start in f.windows.values())
        return len(series), windows, sum(len(h) for s in series for h in s.seen.values())


def _emit(state: FieldState, window: Window, reason: str, out: Emissions) -> None:
    if window.emitted:
        window.revision += 1
    window.emitted = True
    window.dirty = False
    out.windows.append(state.record(window))
    out.closed_by.append(reason)
