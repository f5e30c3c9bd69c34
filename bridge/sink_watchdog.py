"""Bounded Kafka calls for the raw sink. librdkafka 2.x can lose its group
coordinator for good when the single broker restarts after an outage: the
requests to it never leave the queue (`GroupCoordinator: Timed out ... 1
out-queue` every socket.timeout.ms), a synchronous commit never returns and
the member never rejoins (seen in fault scenario (c'); the worker's
transactional calls hang the same way, librdkafka issues 5456 and 5511). Such
a consumer is replaced, not waited for."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer

log = logging.getLogger("bridge.sink")


def call_within(what: str, action: Callable[[], object], timeout_s: float) -> bool:
    """Runs `action` on a daemon thread (one stuck in librdkafka must not hold
    up the interpreter's exit); False when it has not returned within
    `timeout_s`, else True or the exception it raised."""
    raised: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # handed to the caller below
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"sink-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        return False
    if raised:
        raise raised[0]
    return True


def abandon(consumer: Consumer) -> None:
    """Closes a replaced consumer on a daemon thread, once its hung call lets
    it (the client serialises calls): it then leaves the group, so its
    partitions do not wait for its session to expire."""
    def close() -> None:
        try:
            consumer.close()
        except Exception as exc:  # a broken client may refuse to close: it is dropped anyway
            log.info("replaced sink consumer did not close", extra={"error": str(exc)[:300]})

    threading.Thread(target=close, name="sink-close-replaced", daemon=True).start()
