"""`python -m bridge` runs the forwarder and the raw sink in one process;
`forward` and `sink` run one of them; `replay-dlq` re-feeds dead letters."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Producer

from bridge.forwarder import PRODUCER_TUNING, Forwarder
from bridge.kafka_health import KafkaHealth
from bridge.kafka_rebuild import StallGuard
from bridge.mqtt_fast import FastAckClient
from bridge.raw_sink import RawSink
from bridge.routes import Route, load_routes
from bridge.subscriptions import client_id_for
from contracts.clients import (
    ensure_topics,
    kafka_consumer,
    kafka_producer,
    mongo_client,
    mqtt_client,
    mqtt_connect,
)
from contracts.errors import EdgepipeError, ServiceUnavailable
from contracts.logs import configure_logging
from contracts.ops import OpsServer, stop_on_signals
from contracts.settings import Settings, get_settings

log = logging.getLogger("bridge")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bridge",
        description="MQTT -> Kafka (PUBACK only after Kafka's ack) and Kafka -> MongoDB. "
                    "Settings come from the environment (see .env.example).")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="forwarder and raw sink in one process (the default)")
    sub.add_parser("forward", help="only the MQTT -> Kafka forwarder")
    sub.add_parser("sink", help="only the Kafka -> MongoDB raw sink")
    replay = sub.add_parser("replay-dlq", help="re-decode stored dead letters with the "
                                               "current routes and codecs")
    replay.add_argument("--since", type=_utc_time, default=None,
                        help="only dead letters received at or after this ISO-8601 time")
    replay.add_argument("--limit", type=int, default=None, help="at most N dead letters")
    replay.add_argument("--dry-run", action="store_true",
                        help="decode and report, but produce and mark nothing")
    return parser.parse_args(argv)


def _utc_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = get_settings()
    configure_logging("bridge", settings.log_level, settings.log_format)
    try:
        if args.command == "replay-dlq":
            from bridge.replay import replay_dead_letters

            return replay_dead_letters(settings, since=args.since, limit=args.limit,
                                       dry_run=args.dry_run)
        command = args.command or "run"
        return serve(settings, forward=command in ("run", "forward"),
                     sink=command in ("run", "sink"))
    except EdgepipeError as exc:
        log.critical("bridge cannot run", extra={"error": str(exc)})
        return 2


def serve(settings: Settings, *, forward: bool, sink: bool) -> int:
    stop = stop_on_signals()
    routes = load_routes(settings, topic_prefix=settings.bridge_topic_prefix)
    topics = sorted({settings.kafka_topic_readings, settings.kafka_topic_dlq,
                     *(r.kafka_topic for r in routes)})
    try:
        ensure_topics(settings, topics, timeout=5.0)
    except ServiceUnavailable as exc:
        # Not fatal: the producer holds acks until Kafka is there.
        log.error("kafka topics not checked", extra={"error": str(exc)})

    forwarder = _start_forwarder(settings, routes, stop) if forward else None
    raw_sink, sink_thread, sink_stop = _start_sink(settings) if sink else (None, None, None)

    def ready() -> tuple[bool, dict[str, Any]]:
        ok, details = True, {}
        for name, part in (("forwarder", forwarder), ("sink", raw_sink)):
            if part is not None:
                part_ok, details[name] = part.ready()
                ok = ok and part_ok
        return ok, details

    ops = OpsServer("0.0.0.0", settings.bridge_http_port, ready).start()
    log.info("bridge started", extra={"forward": forward, "sink": sink, "http_port": ops.port,
                                      "routes": [r.name for r in routes]})
    sink_died = False
    while not stop.wait(1.0):
        if sink_thread is not None and not sink_thread.is_alive():
            log.critical("sink thread died; stopping")
            sink_died = True  # exit non-zero, so a supervisor restarts the bridge
            stop.set()
    log.info("bridge stopping")
    if forwarder is not None:
        forwarder.stop()
    if sink_thread is not None and sink_stop is not None:
        sink_stop.set()
        sink_thread.join(settings.bridge_shutdown_timeout_s + 10)
    ops.stop()
    log.info("bridge stopped")
    return 1 if sink_died else 0


def _start_forwarder(settings: Settings, routes: list[Route], stop: threading.Event) -> Forwarder:
    kafka_health = KafkaHealth()

    def make_producer() -> Producer:
        return kafka_producer(settings, error_cb=kafka_health.on_error, **PRODUCER_TUNING)

    producer = make_producer()
    client = mqtt_client(settings, client_id_for(settings), persistent=True, manual_ack=True,
                         session_expiry_s=settings.bridge_session_expiry_s,
                         client_class=FastAckClient)
    prefix = settings.bridge_topic_prefix
    unrouted = tuple(prefix + f.strip() for f in settings.bridge_unrouted_filters.split(",")
                     if f.strip())
    forwarder = Forwarder(settings, routes, client, producer, kafka_health, unrouted,
                          StallGuard(make_producer, settings.bridge_kafka_rebuild_s))
    backoff = 1.0
    while True:
        try:
            mqtt_connect(client, settings, receive_maximum=settings.bridge_receive_maximum)
            break
        except ServiceUnavailable as exc:
            log.error("mqtt connect failed; retrying", extra={"error": str(exc)})
            if stop.wait(backoff):
                raise
            backoff = min(backoff * 2, 30.0)
    forwarder.start()
    return forwarder


def _start_sink(settings: Settings) -> tuple[RawSink, threading.Thread, threading.Event]:
    def make_consumer() -> Consumer:
        return kafka_consumer(settings, settings.bridge_sink_group, **{
            "session.timeout.ms": settings.bridge_sink_session_timeout_ms})

    db = mongo_client(settings)[settings.mongo_db]
    raw_sink = RawSink(settings, make_consumer(), db, make_consumer)
    sink_stop = threading.Event()
    thread = threading.Thread(target=raw_sink.run, args=(sink_stop,), name="raw-sink")
    thread.start()
    return raw_sink, thread, sink_stop


if __name__ == "__main__":
    sys.exit(main())
