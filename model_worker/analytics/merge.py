"""Merging one batch's per-window groups into the kept windows: moments,
the smallest windows' points and the larger windows' children. Pure: part of
the analytics step (`engine.py`), no client library."""

from __future__ import annotations

import numpy as np

from contracts.events import NS_PER_S
from contracts.windows import Moments
from model_worker.analytics.policy import WindowPolicy
from model_worker.analytics.reduce import GroupMoments, SortedEntries
from model_worker.analytics.state import FieldState, Window


def merge_moments(m: Moments, count: int, mean: float, m2: float, lo: float,
                  hi: float) -> None:
    """`m.merge(Moments(count, mean, m2, lo, hi))` without building the Moments:
    the same arithmetic in the same order, so the same bits. The hot path of
    the step: up to six merges per reading (three sizes, two children, stats)."""
    if count == 0:
        return
    n0 = m.count
    if n0 == 0:
        m.count, m.mean, m.m2, m.min, m.max = count, mean, m2, lo, hi
        return
    n = n0 + count
    delta = mean - m.mean
    m.mean += delta * count / n
    m.m2 += m2 + delta * delta * n0 * count / n
    m.count = n
    if lo < m.min:  # min(m.min, lo) keeps the first of equals, as this does
        m.min = lo
    if hi > m.max:
        m.max = hi


def merge_windows(policy: WindowPolicy, fields_list: list[FieldState], groups: GroupMoments,
                  size_s: int) -> None:
    """Merge a batch's groups of one size into their windows (new ones are created)."""
    sizes = policy.sizes_s
    detail = size_s == sizes[0] and policy.points_max > 0
    child_s = max((s for s in sizes if s < size_s), default=0)
    nested = policy.children and child_s > 0 and size_s % child_s == 0
    for fpos, start, count, mean, m2, lo, hi, first, last, late in zip(
            groups.field_idx.tolist(), groups.start_ns.tolist(), groups.count.tolist(),
            groups.mean.tolist(), groups.m2.tolist(), groups.min.tolist(),
            groups.max.tolist(), groups.first_ts_ns.tolist(), groups.last_ts_ns.tolist(),
            groups.late.tolist(), strict=True):
        by_start = fields_list[fpos].windows.setdefault(size_s, {})
        window = by_start.get(start)
        if window is None:
            # New windows start with empty detail; reloaded ones keep None.
            by_start[start] = Window(size_s, start, Moments(count, mean, m2, lo, hi), first,
                                     last, late,
                                     points=[] if detail else None,
                                     children={} if nested else None,
                                     children_size_s=child_s if nested else 0)
            continue
        merge_moments(window.moments, count, mean, m2, lo, hi)
        if first < window.first_ts_ns:
            window.first_ts_ns = first
        if last > window.last_ts_ns:
            window.last_ts_ns = last
        window.late_count += late
        window.dirty = True

def merge_points(policy: WindowPolicy, fields_list: list[FieldState],
                 entries: SortedEntries) -> None:
    """Append the batch's readings to their smallest-size windows; a window
    over the cap keeps none."""
    base, cap = policy.base_ns, policy.points_max
    fidx, ts, values = entries.field_idx, entries.ts_ns, entries.values
    start = ts - ts % base
    # Entries are sorted by field then time, so each window is one run.
    heads = np.flatnonzero(np.r_[True, (fidx[1:] != fidx[:-1]) | (start[1:] != start[:-1])])
    tails = np.append(heads[1:], fidx.size)
    ts_list, value_list = ts.tolist(), values.tolist()
    for head, tail in zip(heads.tolist(), tails.tolist(), strict=True):
        window = fields_list[int(fidx[head])].windows[policy.sizes_s[0]][int(start[head])]
        if window.points is None:
            continue
        window.points.extend(zip(ts_list[head:tail], value_list[head:tail], strict=True))
        if len(window.points) > cap:
            window.points = None

def merge_children(policy: WindowPolicy, fields_list: list[FieldState],
                   by_size: list[GroupMoments]) -> None:
    """Merge each batch group of one size into its window of the next larger
    size, when that size is a multiple of it (else that size keeps none)."""
    sizes = policy.sizes_s
    for level in range(1, len(sizes)):
        if sizes[level] % sizes[level - 1]:
            continue
        step = sizes[level] * NS_PER_S
        groups = by_size[level - 1]
        for fpos, start, count, mean, m2, lo, hi in zip(
                groups.field_idx.tolist(), groups.start_ns.tolist(), groups.count.tolist(),
                groups.mean.tolist(), groups.m2.tolist(), groups.min.tolist(),
                groups.max.tolist(), strict=True):
            children = fields_list[fpos].windows[sizes[level]][start - start % step].children
            if children is None:
                continue
            child = children.get(start)
            if child is None:  # what merging into an empty Moments gives, one object less
                children[start] = Moments(count, mean, m2, lo, hi)
            else:
                merge_moments(child, count, mean, m2, lo, hi)
