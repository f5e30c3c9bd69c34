"""Building the worker's Kafka clients (`KafkaSession.open`): an
init_transactions that never returns (the coordinator lookup hang of
librdkafka issues 5456/5511) is abandoned on its watchdog thread and the
build retried with a new producer, instead of holding the worker forever."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from model_worker import kafka_session
from model_worker.kafka_session import KafkaSession


class _Producer:
    def __init__(self, hangs: threading.Event | None = None) -> None:
        self.hangs, self.inits = hangs, 0

    def init_transactions(self, timeout: float) -> None:
        self.inits += 1
        if self.hangs is not None:
            self.hangs.wait()  # until the test ends: librdkafka never answering

    def purge(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0


def test_a_hung_init_transactions_is_abandoned_and_the_build_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_session, "INIT_TIMEOUT_S", 0.2)
    monkeypatch.setattr(kafka_session, "CALL_GRACE_S", 0.1)
    monkeypatch.setattr(kafka_session, "BUILD_BACKOFF_MAX_S", 0.05)
    released = threading.Event()
    hung, good = _Producer(released), _Producer()
    producers = iter([hung, good])
    consumer: Any = object()
    subscribed: list[Any] = []
    session = KafkaSession(lambda: consumer, lambda: next(producers),  # type: ignore[arg-type,return-value]
                           subscribed.append)
    try:
        assert session.open(threading.Event())
    finally:
        released.set()
    assert session.producer is good and session.consumer is consumer
    assert (hung.inits, good.inits, subscribed) == (1, 1, [consumer])
    assert session.build_attempt == 0 and not session.rebuilding


def test_build_attempts_cover_about_four_minutes_of_kafka_away() -> None:
    worst: Any = sum(kafka_session.INIT_TIMEOUT_S + kafka_session.CALL_GRACE_S
                     + min(kafka_session.BUILD_BACKOFF_MAX_S, kafka_session.backoff_s(n))
                     for n in range(1, kafka_session.BUILD_ATTEMPTS + 1))
    assert 200 <= worst <= 300, worst
