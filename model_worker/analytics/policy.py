"""What the pure analytics step is configured with (`WindowPolicy`) and what
it returns (`Emissions`), plus the fields a reading contributes. No client
library."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from contracts.errors import ConfigError
from contracts.events import NS_PER_MS, NS_PER_S, Reading
from contracts.settings import Settings
from contracts.windows import MAGNITUDE_FIELD, SCALAR_FIELD, WindowRecord
from model_worker.analytics.state import FieldState


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
