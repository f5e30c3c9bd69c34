"""The pure analytics step: readings in, closed windows and statistics updates
out. No client library; the stage does the I/O. The policy and output types
are in `policy.py`, the merging of batch groups into windows in `merge.py`.

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

from collections.abc import Sequence

import numpy as np

from contracts.events import NS_PER_S, Reading
from model_worker.analytics.merge import (
    merge_children,
    merge_moments,
    merge_points,
    merge_windows,
)
from model_worker.analytics.policy import Emissions, WindowPolicy, reading_fields
from model_worker.analytics.reduce import (
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

__all__ = ["AnalyticsEngine", "Emissions", "WindowPolicy", "reading_fields"]

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
            merge_windows(self.policy, fields_list, groups, size_s)
            by_size.append(groups)
        if self.policy.points_max:
            merge_points(self.policy, fields_list, entries)
        if self.policy.children:
            merge_children(self.policy, fields_list, by_size)
        groups = reduce_series(entries)
        for fpos, count, mean, m2, lo, hi, first, last, last_value in zip(
                groups.field_idx.tolist(), groups.count.tolist(), groups.mean.tolist(),
                groups.m2.tolist(), groups.min.tolist(), groups.max.tolist(),
                groups.first_ts_ns.tolist(), groups.last_ts_ns.tolist(),
                groups.last_value.tolist(), strict=True):
            state = fields_list[fpos]
            if state.stats.count == 0 or first < state.first_ts_ns:
                state.first_ts_ns = first
            merge_moments(state.stats, count, mean, m2, lo, hi)
            if last >= state.last_ts_ns:
                state.last_ts_ns, state.last_value = last, last_value
            out.stats.append(state)

    def _close(self, series: SeriesState, out: Emissions) -> None:
        """Emit windows the stream time closed; forget windows and event ids
        beyond the allowed lateness (nothing can change them any more)."""
        stream, grace, lateness = series.stream_ns, self.policy.grace_ns, self.policy.lateness_ns
        # Per size the bounds on a window's start, not its end per window: this
        # runs over every kept window of each series in every batch.
        for state in series.fields.values():
            for size_s, by_start in state.windows.items():
                close_from = stream - grace - size_s * NS_PER_S  # end + grace <= stream
                drop_from = close_from - lateness
                gone: list[int] = []
                for start, window in by_start.items():
                    if start > close_from:
                        continue
                    if window.dirty:
                        _emit(state, window, "stream", out)
                    if start <= drop_from:
                        gone.append(start)
                for start in gone:
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
