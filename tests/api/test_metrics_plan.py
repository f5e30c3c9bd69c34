"""Pure parts of the `_id` plan: splitting a range into aligned windows,
choosing the stored series a key names, the cache of final windows, and the
window document's points and children arrays."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from api.metrics_logic import Series
from api.metrics_plan import MISSING, SeriesRef, WindowCache, choose_series, is_final, split
from contracts.events import NS_PER_S
from contracts.windows import Moments, WindowRecord, children_from_document

T0 = 1_763_769_600 * NS_PER_S


@given(st.integers(0, 10**6), st.integers(1, 10**6), st.sampled_from([10, 60, 3600]))
def test_split_tiles_the_range_with_aligned_windows(a: int, length: int, size_s: int) -> None:
    lo, hi, step = T0 + a * 10**7, T0 + (a + length) * 10**7, size_s * NS_PER_S
    parts = split(lo, hi, step)
    position = lo
    for start, part_lo, part_hi in parts:
        assert start % step == 0 and start <= part_lo < part_hi <= start + step
        assert part_lo == position
        position = part_hi
    assert position == hi


def stat(device: str, sensor: str, field: str, last: int = 5) -> dict[str, object]:
    return {"device_id": device, "sensor": sensor, "field": field, "last_ts_ns": last}


def test_choose_series_prefers_the_whole_sensor_and_refuses_mixed_devices() -> None:
    stats = [stat("a", "acc", "x"), stat("a", "acc", "magnitude"), stat("b", "acc", "magnitude"),
             stat("a", "acc.x", "value")]
    chosen = choose_series("acc.x", stats)
    assert chosen == (Series("acc.x", None), [SeriesRef("a", "acc.x", "value", 5)])
    chosen = choose_series("acc", stats)
    assert chosen is not None and sorted(r.device_id for r in chosen[1]) == ["a", "b"]
    assert all(r.field == "magnitude" for r in chosen[1])
    assert choose_series("acc.y", stats) is None  # nothing stored for it: raw readings
    mixed = [stat("a", "t", "value"), stat("a", "t", "magnitude")]
    assert choose_series("t", mixed) is None


def test_only_windows_past_the_allowed_lateness_are_final() -> None:
    ref = SeriesRef("a", "t", "value", 100 * NS_PER_S)
    assert is_final(ref, 39 * NS_PER_S, NS_PER_S, 60 * NS_PER_S)
    assert not is_final(ref, 40 * NS_PER_S, NS_PER_S, 60 * NS_PER_S)


def test_cache_keeps_the_most_recent_entries() -> None:
    cache = WindowCache(2)
    cache.put(("a", False), {"count": 1})
    cache.put(("b", False), MISSING)
    assert cache.get(("a", False)) == {"count": 1}  # now most recent
    cache.put(("c", False), {"count": 3})
    assert cache.get(("b", False)) is None and cache.get(("a", False)) is not None
    assert len(cache) == 2
    assert len(WindowCache(0)) == 0


def test_children_round_trip_through_the_document() -> None:
    kids = [(T0, Moments(2, 1.5, 0.5, 1.0, 2.0)), (T0 + 60 * NS_PER_S, Moments(1, 7.0, 0.0, 7.0,
                                                                              7.0))]
    record = WindowRecord("a", "t", "value", 3600, T0, Moments(), T0, T0, children=kids,
                          children_size_s=60)
    assert children_from_document(record.to_document(), 60) == kids
    assert children_from_document(record.to_document(), 10) is None  # other sizes: unusable
    assert children_from_document(WindowRecord("a", "t", "value", 3600, T0, Moments(), T0,
                                               T0).to_document(), 60) is None
