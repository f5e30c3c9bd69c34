"""Replacing the raw sink's consumer when a call to it hangs (bounded by
contracts.clients.call_within). librdkafka 2.x can lose its group
coordinator for good when the single broker restarts after an outage: the
requests to it never leave the queue (`GroupCoordinator: Timed out ... 1
out-queue` every socket.timeout.ms), a synchronous commit never returns and
the member never rejoins (seen in fault scenario (c'); the worker's
transactional calls hang the same way, librdkafka issues 5456 and 5511). Such
a consumer is replaced, not waited for."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer

log = logging.getLogger("bridge.sink")


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
