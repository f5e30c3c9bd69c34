"""The worker's Kafka consumer and transactional producer, and their
replacement when librdkafka declares one of them unusable.

Some Kafka errors end a client for good: a fatal error (the transactional
producer fenced by a newer epoch, a static consumer fenced by a member with
its `group.instance.id`, which librdkafka does to its own consumer when its
session timed out during a Kafka outage and it rejoined), or a member id the
group no longer knows. Retrying on that client changes nothing. The loop then
aborts what is open, drops both clients and builds new ones from the factories
`__main__` passed in: `init_transactions` on the new producer fences the old
one and aborts its open transaction, the new consumer resumes from the
committed offsets, so every uncommitted batch is read again (at least once),
and the idempotent writes make that exactly once in effect.

The transactional calls also run under a watchdog (`call`): librdkafka 2.x's
send_offsets_to_transaction can block past its own timeout, indefinitely,
when its cached group coordinator went away (seen here when the single broker
restarts after an outage; librdkafka issues 5456 and 5511). A call that does
not return in time counts as an unusable producer: it is abandoned on its
thread and the clients are rebuilt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from contracts.clients import KafkaCallHung, call_within
from contracts.errors import ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors after which a client is replaced rather than retried. Fatal errors
# (KafkaError.fatal()) always are; these are the non-fatal codes that mean the
# client's identity is gone: a member id the group forgot, a producer epoch a
# newer instance took over, or a transaction state the client cannot leave.
REBUILD_CODES = frozenset({
    KafkaError._FATAL,
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.INVALID_TXN_STATE,
    KafkaError._STATE,
})

# Building the clients: attempts in a row before giving up and exiting non-zero
# (a supervisor restarts the process), with exponential backoff capped at
# BUILD_BACKOFF_MAX_S: each attempt already waits INIT_TIMEOUT_S for the
# coordinator, and a longer pause would only delay the worker once Kafka is
# back. With INIT_TIMEOUT_S per attempt that is about 4 minutes of Kafka being
# unreachable.
BUILD_ATTEMPTS = 12
BUILD_BACKOFF_MAX_S = 5.0
# Rebuilds that succeed but are needed again at once (e.g. two processes sharing
# WORKER_INSTANCE_ID fence each other forever) also end the process: more than
# REBUILDS_MAX within REBUILDS_WINDOW_S.
REBUILDS_MAX = 6
REBUILDS_WINDOW_S = 600.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# init_transactions waits this long for the transaction coordinator per attempt;
# shorter than the transaction timeout so an unreachable Kafka is retried (and
# reported) in steps rather than in one long block.
INIT_TIMEOUT_S = 15.0
# An old client that does not close within this is abandoned (its threads die
# with the process): closing must never hang the loop.
CLOSE_TIMEOUT_S = 10.0


# A transactional call that has not returned this long after its own timeout
# is taken as hung (see the module docstring).
CALL_GRACE_S = 5.0


class KafkaRebuildFailed(ServiceUnavailable):
    """The Kafka clients could not be rebuilt within the bounds: exit non-zero."""


def kafka_error_of(exc: BaseException | None) -> KafkaError | None:
    """The KafkaError behind `exc`, following `raise ... from` chains (the
    sinks wrap Kafka errors in ServiceUnavailable)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
            return exc.args[0]
        exc = exc.__cause__ or exc.__context__
    return None


def rebuild_reason(error: KafkaError | None) -> str | None:
    """A short label (metric and log) when `error` means the clients must be
    replaced; None when retrying on the same clients is right."""
    if error is None:
        return None
    if error.fatal():
        return "fatal"
    if error.code() in REBUILD_CODES:
        return str(error.name()).lstrip("_").lower()
    return None


def rebuild_reason_of(exc: BaseException | KafkaError) -> str | None:
    """`rebuild_reason` of an exception (or a consumed message's error)."""
    if isinstance(exc, KafkaError):
        return rebuild_reason(exc)
    if isinstance(exc, KafkaCallHung) or isinstance(exc.__cause__, KafkaCallHung):
        return "hung"
    return rebuild_reason(kafka_error_of(exc))


def backoff_s(attempt: int) -> float:
    """1, 2, 4, ... seconds, capped: `attempt` counts from 1."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(attempt - 1, 10)))


class KafkaSession:
    """The current consumer and transactional producer. `open` builds them
    (retrying with backoff), `discard` drops them without ever blocking for
    longer than CLOSE_TIMEOUT_S; `subscribe` is called on every new consumer."""

    def __init__(self, make_consumer: Callable[[], Consumer],
                 make_producer: Callable[[], Producer],
                 subscribe: Callable[[Consumer], None], *,
                 first_producer: Producer | None = None) -> None:
        self._make_consumer = make_consumer
        # The stages are built before the loop runs, with this producer.
        self._first_producer = first_producer
        self._make_producer = make_producer
        self._subscribe = subscribe
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.rebuilding = False
        self.build_attempt = 0
        self.rebuilds = 0
        self._recent: deque[float] = deque()
        self._hung = False

    def call(self, what: str, action: Callable[[], T], timeout_s: float) -> T:
        """`action()` (a call with `timeout_s` as its own timeout), bounded by
        `call_within`: KafkaCallHung when it has not returned CALL_GRACE_S
        after that, and the clients are then replaced."""
        try:
            return call_within(what, action, timeout_s + CALL_GRACE_S)
        except KafkaCallHung:
            self._hung = True
            raise

    def open(self, stop: threading.Event) -> bool:
        """New clients, transactions initialised and subscribed. False when
        `stop` was set meanwhile; KafkaRebuildFailed after BUILD_ATTEMPTS."""
        for attempt in range(1, BUILD_ATTEMPTS + 1):
            self.build_attempt = attempt
            try:
                self.producer = self._first_producer or self._make_producer()
                self._first_producer = None
                # Under the watchdog too: it waits for the transaction coordinator.
                # (No local name for the producer: a failed one must be freed by discard.)
                self.call("init_transactions",
                          partial(self.producer.init_transactions, INIT_TIMEOUT_S), INIT_TIMEOUT_S)
                self.consumer = self._make_consumer()
                self._subscribe(self.consumer)
                self.build_attempt = 0
                return True
            except (KafkaException, KafkaCallHung) as exc:
                self.discard()
                error = kafka_error_of(exc)
                log.warning("kafka clients not built; retrying", extra={
                    "attempt": attempt, "of": BUILD_ATTEMPTS, "error": str(error or exc)[:300]})
            if stop.wait(min(BUILD_BACKOFF_MAX_S, backoff_s(attempt))):
                return False
        raise KafkaRebuildFailed(f"Kafka clients not built in {BUILD_ATTEMPTS} attempts")

    def note_rebuild(self) -> float:
        """Counts a rebuild; the backoff before it. Raises KafkaRebuildFailed
        when rebuilds come faster than the bound allows."""
        now = time.monotonic()
        while self._recent and now - self._recent[0] > REBUILDS_WINDOW_S:
            self._recent.popleft()
        self._recent.append(now)
        self.rebuilds += 1
        if len(self._recent) > REBUILDS_MAX:
            raise KafkaRebuildFailed(
                f"{len(self._recent)} Kafka client rebuilds within {REBUILDS_WINDOW_S:.0f} s")
        return backoff_s(len(self._recent))

    def abort_quietly(self, timeout_s: float) -> None:
        """Best effort: the next producer's init_transactions aborts whatever
        this one leaves open, so a failure here is only logged."""
        if self.producer is None or self._hung:
            return  # a hung call still holds the producer: nothing more goes through it
        producer = self.producer
        try:
            self.call("abort_transaction", lambda: producer.abort_transaction(timeout_s), timeout_s)
        except (KafkaException, KafkaCallHung) as exc:
            error = kafka_error_of(exc)
            if error is None or error.code() != KafkaError._STATE:  # _STATE: nothing open
                log.info("abort before rebuild failed", extra={"error": str(error or exc)[:300]})

    def discard(self) -> None:
        consumer, producer = self.consumer, self.producer
        self.consumer = self.producer = None
        self._hung = False  # a hung call's thread keeps the old producer; it is left behind
        if consumer is not None:
            _finish_within("consumer", consumer.close)
        if producer is not None:
            _finish_within("producer", partial(_drop_producer, producer))

    def close(self, flush_s: float) -> None:
        """Orderly shutdown: closes the consumer and flushes the producer."""
        producer = self.producer
        if producer is not None and not self._hung:
            _finish_within("producer", lambda: producer.flush(flush_s), flush_s + CLOSE_TIMEOUT_S)
        self.producer = None
        self.discard()


def _drop_producer(producer: Producer) -> None:
    """Undelivered records belong to a transaction that is aborted anyway."""
    producer.purge()
    producer.flush(0)


def _finish_within(what: str, action: Callable[[], object],
                   timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Runs `action` on a daemon thread and waits at most `timeout_s`: a
    client wedged by a fatal error or an unreachable broker must not hang the
    loop (an abandoned one dies with the process)."""
    def run() -> None:
        try:
            action()
        except Exception as exc:  # a broken client may refuse to close: it is dropped anyway
            log.info("kafka client close failed", extra={"client": what, "error": str(exc)[:300]})

    thread = threading.Thread(target=run, name=f"close-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.warning("kafka client did not close in time; abandoned",
                    extra={"client": what, "timeout_s": timeout_s})
