"""The top-down window plan of `POST /compute/metrics` as a pure walk over
window documents already fetched: no I/O, so the reader can run it, fetch
every document it asked for in one `_id $in` round, and run it again.

A range is solved top down: each window of the largest size overlapping it
is merged whole when inside the range; when the range ends inside it, its
children's moments (`children`) give the whole children, and only the child
cut by the range edge is opened, down to a smallest window whose points give
the readings. Windows not closed yet, and documents without children or
points, fall back to the next smaller size and finally to raw readings.

A document not fetched yet is assumed to be what the plan expects (present,
with children or points), and the walk goes on into the children the range
edge cuts. So the first walk already names every document of an ordinary
request: one round trip. Only a surprise (an empty window, a document without
children) changes the plan, and the next walk asks for what it needs then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api.metrics_plan import MISSING, SeriesRef, is_final, split, watermark
from contracts.events import NS_PER_S
from contracts.windows import Moments, children_from_document, points_from_document

WindowKey = tuple[str, bool]  # (window `_id`, with points or children)
Known = Callable[[WindowKey], dict[str, Any] | None]  # None: not fetched yet


class Walk:
    """One pass of the plan over every series of a request key.

    `moments` and `raw` are the answer only when `wanted` is empty; otherwise
    `wanted` names the documents to fetch (and whether each is final, so
    cacheable) before walking again."""

    def __init__(self, sizes: list[int], grace_ns: int, lateness_ns: int, known: Known) -> None:
        self.sizes = sorted(sizes)
        self.grace_ns, self.lateness_ns = grace_ns, lateness_ns
        self.known = known
        self.moments = Moments()
        self.raw: list[tuple[str, int, int]] = []  # (device, lo, hi) only raw readings answer
        self.wanted: dict[WindowKey, bool] = {}

    def run(self, refs: list[SeriesRef], lo: int, hi: int) -> Walk:
        for ref in refs:
            self.solve(ref, lo, hi, len(self.sizes) - 1)
        return self

    def worth_opening(self, level: int, lo: int, hi: int) -> bool:
        """A cut window of a larger size helps only when a whole child of it
        lies in [lo, hi); otherwise its children are read directly."""
        if level == 0:
            return True
        child = self.sizes[level - 1] * NS_PER_S
        return -(-lo // child) * child + child <= hi

    def document(self, ref: SeriesRef, size_s: int, start: int,
                 detail: bool) -> dict[str, Any] | None:
        key = (ref.window_id(size_s, start), detail)
        doc = self.known(key)
        if doc is None and not detail:  # a detailed copy holds the moments too
            doc = self.known((key[0], True))
        if doc is None:
            self.wanted[key] = is_final(ref, start + size_s * NS_PER_S, self.grace_ns,
                                        self.lateness_ns)
        return doc

    def solve(self, ref: SeriesRef, lo: int, hi: int, level: int) -> None:
        """The series' readings in [lo, hi) from windows of `self.sizes[level]`
        and smaller."""
        for start, a, b in split(lo, hi, self.sizes[level] * NS_PER_S):
            self.part(ref, level, start, a, b)

    def part(self, ref: SeriesRef, level: int, start: int, lo: int, hi: int) -> None:
        size_s = self.sizes[level]
        end = start + size_s * NS_PER_S
        if end > watermark(ref, self.grace_ns):  # not closed yet
            if level:
                self.solve(ref, lo, hi, level - 1)
            else:
                self.raw.append((ref.device_id, lo, hi))
            return
        whole = lo == start and hi == end
        if not whole and not self.worth_opening(level, lo, hi):
            self.solve(ref, lo, hi, level - 1)
            return
        doc = self.document(ref, size_s, start, not whole)
        if doc is None:
            if not whole and level:
                self.expect_children(ref, level, lo, hi)
            return
        if doc is MISSING or int(doc["count"]) == 0:
            return  # closed and empty
        if whole:
            self.moments.merge(Moments.from_dict(doc))
        elif level == 0:
            points = points_from_document(doc)
            if points is None:  # over the points cap, or written without them
                self.raw.append((ref.device_id, lo, hi))
                return
            for ts_ns, value in points:
                if lo <= ts_ns < hi:
                    self.moments.add(value)
        else:
            self.children(ref, level, doc, lo, hi)

    def children(self, ref: SeriesRef, level: int, doc: dict[str, Any], lo: int,
                 hi: int) -> None:
        children = children_from_document(doc, self.sizes[level - 1])
        if children is None:
            self.solve(ref, lo, hi, level - 1)
            return
        child_ns = self.sizes[level - 1] * NS_PER_S
        for child_start, child in children:
            child_end = child_start + child_ns
            if lo <= child_start and child_end <= hi:
                self.moments.merge(child)
            elif child_start < hi and lo < child_end:
                self.part(ref, level - 1, child_start, max(lo, child_start),
                          min(hi, child_end))

    def expect_children(self, ref: SeriesRef, level: int, lo: int, hi: int) -> None:
        """Before a cut window is fetched: walk on into the children the range
        edge cuts, as if it has them all, so they are fetched in the same round."""
        child_ns = self.sizes[level - 1] * NS_PER_S
        for child_start, a, b in split(lo, hi, child_ns):
            if a != child_start or b != child_start + child_ns:
                self.part(ref, level - 1, child_start, a, b)
