"""The contract between the worker's Kafka loop and what runs on each batch.

The loop polls a micro-batch from Kafka `readings`, decodes it, hands the same
`ConsumedBatch` to every stage (scoring, stream analytics), and commits the
offsets only after every stage's `handle` returned: a stage that raises leaves
the batch uncommitted, so it is delivered again. Stages therefore must make
their writes idempotent and must not count a redelivered reading twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from contracts.events import Reading


@dataclass(slots=True)
class ConsumedBatch:
    """Readings in consumption order with their Kafka positions, aligned by index."""

    topic: str
    readings: list[Reading] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.readings)


class Stage(Protocol):
    name: str

    def handle(self, batch: ConsumedBatch, now_ns: int) -> None:
        """Process and write one batch; raise to have it redelivered."""

    def tick(self, now_ns: int) -> None:
        """Called at least once a second, also with no input (idle timeouts)."""

    def assigned(self, partitions: list[int]) -> None:
        """The consumer group gave this process these partitions (load state)."""

    def revoked(self, partitions: list[int]) -> None:
        """These partitions go elsewhere (flush and forget their state)."""

    def close(self) -> None:
        """Flush and release on shutdown, after the last `handle`."""
