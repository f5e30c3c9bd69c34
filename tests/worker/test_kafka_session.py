"""Which Kafka errors make the worker replace its clients, and the bounds on
doing so (pure logic; the real fencing is in test_worker_recovery.py)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from contracts.errors import ServiceUnavailable
from model_worker import kafka_session
from model_worker.kafka_session import (
    KafkaRebuildFailed,
    KafkaSession,
    backoff_s,
    kafka_error_of,
    rebuild_reason,
)


@pytest.mark.parametrize(("error", "reason"), [
    (KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True), "fatal"),
    (KafkaError(KafkaError.PRODUCER_FENCED, "epoch", fatal=True), "fatal"),
    (KafkaError(KafkaError._FATAL), "fatal"),
    (KafkaError(KafkaError.UNKNOWN_MEMBER_ID), "unknown_member_id"),
    (KafkaError(KafkaError._FENCED), "fenced"),
    (KafkaError(KafkaError.INVALID_PRODUCER_EPOCH), "invalid_producer_epoch"),
    (KafkaError(KafkaError._STATE), "state"),
    # Retried on the same clients: the outage itself, an abortable transaction,
    # a rebalance the consumer handles on its own.
    (KafkaError(KafkaError._TIMED_OUT, "t", retriable=True), None),
    (KafkaError(KafkaError._TRANSPORT), None),
    (KafkaError(KafkaError._ALL_BROKERS_DOWN), None),
    (KafkaError(KafkaError.ILLEGAL_GENERATION, "g", txn_requires_abort=True), None),
    (KafkaError(KafkaError.REBALANCE_IN_PROGRESS), None),
    (None, None),
])
def test_rebuild_reason(error: KafkaError | None, reason: str | None) -> None:
    assert rebuild_reason(error) == reason


def test_kafka_error_found_behind_a_wrapping_error() -> None:
    error = KafkaError(KafkaError.PRODUCER_FENCED, "fenced", fatal=True)
    try:
        try:
            raise KafkaException(error)
        except KafkaException as exc:
            raise ServiceUnavailable("Kafka produce to analytics") from exc
    except ServiceUnavailable as wrapped:
        found = kafka_error_of(wrapped)
    assert found is not None and found.code() == KafkaError.PRODUCER_FENCED
    assert kafka_error_of(ServiceUnavailable("MongoDB down")) is None
    assert kafka_error_of(None) is None


def test_backoff_doubles_and_is_capped() -> None:
    waits = [backoff_s(n) for n in range(1, 9)]
    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert waits[5:] == [kafka_session.BACKOFF_MAX_S] * 3


def test_rebuilds_beyond_the_bound_end_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def unused() -> None:
        raise AssertionError("no client is built here")

    session = KafkaSession(unused, unused, lambda c: None)  # type: ignore[arg-type]
    clock = [1000.0]
    monkeypatch.setattr(kafka_session.time, "monotonic", lambda: clock[0])
    for n in range(1, kafka_session.REBUILDS_MAX + 1):
        assert session.note_rebuild() == backoff_s(n)
        clock[0] += 1
    with pytest.raises(KafkaRebuildFailed):
        session.note_rebuild()
    # Rebuilds spread out more than the window apart never add up.
    spaced = KafkaSession(unused, unused, lambda c: None)  # type: ignore[arg-type]
    for _ in range(3 * kafka_session.REBUILDS_MAX):
        assert spaced.note_rebuild() == backoff_s(1)
        clock[0] += kafka_session.REBUILDS_WINDOW_S + 1
    assert isinstance(KafkaRebuildFailed("x"), ServiceUnavailable)  # main() exits 1 on it


def test_a_call_that_outlives_its_timeout_is_reported_hung(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from model_worker.kafka_session import KafkaCallHung, rebuild_reason_of

    def unused() -> None:
        raise AssertionError("no client is built here")

    monkeypatch.setattr(kafka_session, "CALL_GRACE_S", 0.05)
    session = KafkaSession(unused, unused, lambda c: None)  # type: ignore[arg-type]
    assert session.call("quick", lambda: 42, 0.05) == 42
    with pytest.raises(KafkaException):  # the call's own errors come through unchanged
        session.call("failing", lambda: (_ for _ in ()).throw(
            KafkaException(KafkaError(KafkaError._TIMED_OUT))), 0.05)
    release = threading.Event()
    with pytest.raises(KafkaCallHung) as hung:
        session.call("send_offsets_to_transaction", lambda: release.wait(5), 0.05)
    release.set()
    assert rebuild_reason_of(hung.value) == "hung"
    assert rebuild_reason_of(KafkaException(KafkaError(KafkaError._TIMED_OUT))) is None
