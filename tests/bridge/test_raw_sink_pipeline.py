"""The raw sink's commit order with writes in flight, driven directly: the
writer's results are futures the test completes, the consumer records commits.
(The same paths run against the real services in test_raw_sink.py.)"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from confluent_kafka import TopicPartition

from bridge.raw_sink import RawSink
from bridge.sink_batch import Batch, offset_jumps
from contracts.settings import get_settings


class RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


def sink_with(*batches: tuple[Future[bool], dict[tuple[str, int], int]]) -> tuple[RawSink, Any]:
    consumer = RecordingConsumer()
    sink = RawSink(get_settings(), consumer, {"readings": None, "dead_letters": None})  # type: ignore[arg-type]
    for future, offsets in batches:
        sink._pending.append((future, Batch(offsets=offsets)))
        sink._assigned |= offsets.keys()
    return sink, consumer


def test_a_later_batch_waits_for_every_earlier_write() -> None:
    first, second, third = Future[bool](), Future[bool](), Future[bool]()
    sink, consumer = sink_with((first, {("r", 0): 10}), (second, {("r", 0): 20, ("r", 1): 5}),
                               (third, {("r", 1): 9}))
    second.set_result(True)
    sink._commit_written()
    assert consumer.commits == [], "committed past a batch that is not written yet"
    first.set_result(True)
    sink._commit_written()
    assert consumer.commits == [[("r", 0, 10)], [("r", 0, 20), ("r", 1, 5)]]
    third.set_result(True)
    sink._commit_written()
    assert consumer.commits[-1] == [("r", 1, 9)] and not sink._pending


def test_nothing_after_an_unwritten_batch_is_committed() -> None:
    first, second = Future[bool](), Future[bool]()
    sink, consumer = sink_with((first, {("r", 0): 10}), (second, {("r", 0): 20}))
    second.set_result(True)  # written although the one before it was given up
    first.set_result(False)
    sink._commit_written()
    assert consumer.commits == [] and sink._abandoned
    assert sink._step(0.0, None) is False  # type: ignore[arg-type]


def test_a_revoke_commits_what_is_written_then_drops_the_revoked_partitions() -> None:
    first, second = Future[bool](), Future[bool]()
    sink, consumer = sink_with((first, {("r", 0): 10, ("r", 1): 3}), (second, {("r", 0): 20}))
    first.set_result(True)
    sink._on_revoke(consumer, [TopicPartition("r", 0)])  # second still being written
    assert consumer.commits == [[("r", 0, 10), ("r", 1, 3)]] and len(sink._pending) == 1
    second.set_result(True)
    sink._commit_written()
    # r/0 belongs to someone else now: its offset 20 is not committed by this member.
    assert consumer.commits == [[("r", 0, 10), ("r", 1, 3)]] and not sink._pending


def test_a_lost_assignment_commits_nothing_for_its_partitions() -> None:
    first = Future[bool]()
    sink, consumer = sink_with((first, {("r", 0): 10, ("r", 1): 3}))
    sink._on_lost(consumer, [TopicPartition("r", 0), TopicPartition("r", 1)])
    sink._on_assign(consumer, [TopicPartition("r", 1)])  # r/1 comes back, r/0 does not
    first.set_result(True)
    sink._commit_written()
    assert consumer.commits == [], "committed an offset consumed under the lost assignment"


def test_offset_jumps_tell_a_skip_from_a_step_back() -> None:
    next_offset: dict[tuple[str, int], int] = {}
    first = Batch(offsets={("r", 0): 10, ("r", 1): 4}, starts={("r", 0): 0, ("r", 1): 0})
    assert offset_jumps(next_offset, first) == []  # nothing consumed before: no reference
    follows = Batch(offsets={("r", 0): 20}, starts={("r", 0): 10})
    assert offset_jumps(next_offset, follows) == []
    skipped = Batch(offsets={("r", 0): 30, ("r", 1): 8}, starts={("r", 0): 21, ("r", 1): 2})
    assert offset_jumps(next_offset, skipped) == [(("r", 0), 20, 21), (("r", 1), 4, 2)]
    assert next_offset == {("r", 0): 30, ("r", 1): 8}


def test_a_released_partition_drops_the_records_carried_from_a_keepalive_poll() -> None:
    class Msg:
        def __init__(self, partition: int) -> None:
            self.p = partition

        def topic(self) -> str:
            return "r"

        def partition(self) -> int:
            return self.p

    sink, _ = sink_with()
    sink._assigned = {("r", 0), ("r", 1)}
    sink._carried = [Msg(0), Msg(1)]  # type: ignore[list-item]
    sink._on_lost(sink.consumer, [TopicPartition("r", 0)])
    assert [m.partition() for m in sink._carried] == [1]
