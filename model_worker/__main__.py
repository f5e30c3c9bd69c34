"""`python -m model_worker` runs the worker; `train` and `make-demo-model`
fit Prophet models (see `--help`)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from contracts.clients import (
    ensure_topics,
    kafka_consumer,
    kafka_producer,
    mongo_client,
    mqtt_client,
    mqtt_connect,
)
from contracts.errors import EdgepipeError
from contracts.logs import configure_logging
from contracts.mqtt_publish import LeanClient
from contracts.ops import OpsServer, stop_on_signals
from contracts.settings import Settings, get_settings
from model_worker import train
from model_worker.analytics.stage import AnalyticsStage
from model_worker.loop import TRANSACTION_TIMEOUT_S, WorkerLoop
from model_worker.models import SUFFIXES
from model_worker.registry import ModelRegistry
from model_worker.scoring_stage import ScoringStage
from model_worker.stage import Stage

log = logging.getLogger("model_worker")
MQTT_MAX_INFLIGHT = 1000


def run(settings: Settings) -> None:
    stop = stop_on_signals()
    registry = ModelRegistry(settings.model_path, settings.model_trust_pickle,
                             settings.worker_interval_grid_s, settings.worker_model_poll_s)
    registry.refresh()
    if not registry.current():
        log.warning("no model loaded yet: readings pass through with model null",
                    extra={"model_path": str(settings.model_path)})
    registry.start()

    instance = settings.worker_instance_id or f"{settings.worker_group}-{socket.gethostname()}"
    ensure_topics(settings, [settings.kafka_topic_readings, settings.kafka_topic_dlq,
                             settings.kafka_topic_analytics, settings.kafka_topic_windows])
    # Clients come from these factories: the loop builds a new pair when one
    # is unusable for good (fatal, fenced, unknown member) and resumes from the
    # committed offsets.
    make_consumer = partial(kafka_consumer, settings, settings.worker_group, **{
        # Static membership: a restarted (or rebuilt) instance takes its
        # partitions back at once, replacing its old member, instead of waiting
        # out that member's session timeout in a rebalance, which after a Kafka
        # outage would hold the whole group up to 45 s after Kafka returns.
        # Its cost, a self-fencing FENCED_INSTANCE_ID fatal error when the
        # session times out during an outage, is what the loop's rebuild handles.
        "group.instance.id": instance,
        # How long a dead static member keeps its partitions (no rebalance until
        # then); also how long Kafka may be away before the member is fenced.
        # librdkafka's default, stated because the failover bounds rest on it.
        "session.timeout.ms": 45_000,
        # A batch's longest path (MQTT 30 s, analytics flush 30 s, three
        # transactional calls of TXN_CALL_TIMEOUT_S) stays well inside this
        # between polls; a rebuild replaces the consumer, so it never counts.
        "max.poll.interval.ms": 300_000,
    })
    make_producer = partial(kafka_producer, settings, **{
        # One transactional id per instance: a rebuilt producer fences the
        # old one and aborts whatever it left open.
        "transactional.id": instance,
        "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_S * 1000),
        # librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        "message.timeout.ms": int(TRANSACTION_TIMEOUT_S * 1000),
        "linger.ms": 20, "batch.num.messages": 10_000})
    producer = make_producer()
    mongo = mongo_client(settings)
    db = mongo[settings.mongo_db]
    # LeanClient: results and analytics go out in one write per batch, and acks
    # skip paho's per-packet decoding (contracts.mqtt_publish).
    mqtt = mqtt_client(settings, client_id=f"edgepipe-worker-{instance}", client_class=LeanClient)
    mqtt.max_inflight_messages_set(MQTT_MAX_INFLIGHT)
    mqtt_connect(mqtt, settings)
    mqtt.loop_start()

    stages: list[Stage] = [
        ScoringStage(registry, producer, db, mqtt,
                     analytics_topic=settings.kafka_topic_analytics,
                     mqtt_topic=settings.mqtt_results_topic,
                     score_fields=settings.worker_score_fields),
    ]
    if settings.analytics_enabled:
        # Analytics checkpoints its own state (with the applied offsets) and re-reads
        # what came after it on a restart (the replay consumer reads the group's committed
        # offsets and assigned partitions, never joining the group); its
        # window records must not ride in the loop's transaction, or an abort would
        # drop windows its state says were sent.
        stages.append(AnalyticsStage(
            settings, kafka_producer(settings), db, mqtt,
            replay_consumer=kafka_consumer(settings, settings.worker_group)))
    loop = WorkerLoop(make_consumer, make_producer, stages, db,
                      topic=settings.kafka_topic_readings,
                      dlq_topic=settings.kafka_topic_dlq,
                      batch_size=settings.worker_batch_size,
                      batch_wait_s=settings.worker_batch_wait_ms / 1000,
                      score_fields=settings.worker_score_fields, producer=producer)

    def ready() -> tuple[bool, dict[str, Any]]:
        models = registry.current()
        details: dict[str, Any] = {
            "models": {n: m.stamp.to_dict() for n, m in models.items()},
            "model_load_errors": [{"path": f.path, "error": f.error} for f in
                                  registry.failures()],
            "mqtt": mqtt.is_connected(),
        }
        details["kafka"] = loop.kafka_status()
        current = loop.session.producer
        if details["kafka"] is True and current is not None:
            try:
                current.list_topics(timeout=2)
            except Exception as exc:  # any failure reads as unreachable
                details["kafka"] = f"unreachable: {exc}"
        try:
            mongo.admin.command("ping")
            details["mongo"] = True
        except Exception as exc:
            details["mongo"] = f"unreachable: {exc}"
        ok = bool(models) and all(details[k] is True for k in ("mqtt", "kafka", "mongo"))
        return ok, details

    ops = OpsServer("0.0.0.0", settings.worker_http_port, ready).start()
    log.info("model worker started", extra={
        "topic": settings.kafka_topic_readings, "group": settings.worker_group,
        "instance": instance, "ops_port": ops.port, "model_path": str(settings.model_path)})
    try:
        loop.run(stop)
    finally:
        registry.stop()
        mqtt.loop_stop()
        mqtt.disconnect()
        mongo.close()
        ops.stop()
        log.info("model worker stopped", extra={"committed_events": loop.committed_events})


def run_train(settings: Settings, args: argparse.Namespace) -> None:
    if args.csv:
        frame = train.frame_from_csv(Path(args.csv))
    else:
        query: dict[str, Any] = {"sensor": args.sensor}
        if args.device:
            query["device_id"] = args.device
        if args.since:
            query["ts"] = {"$gte": datetime.now(UTC) - train.parse_since(args.since)}
        with mongo_client(settings) as client:
            documents = list(client[settings.mongo_db]["readings"].find(query))
        frame = train.frame_from_documents(documents, settings.worker_score_fields)
    model, report = train.fit_prophet(frame)
    train.save_model(model, Path(args.out), args.format)
    print(f"fitted {report.rows} rows in {report.fit_s:.1f}s; held-back tail of "
          f"{report.holdout_rows}: MAE {report.holdout_mae:.4g}, "
          f"interval coverage {report.holdout_coverage:.1%}; saved {args.out}")
    if args.plot:
        train.plot_forecast(model, frame, Path(args.plot), f"{args.sensor}: actual vs forecast")
        print(f"plot written to {args.plot}")


def run_make_demo(args: argparse.Namespace) -> None:
    folder = Path(args.out).parent
    if args.if_missing and folder.is_dir():
        present = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        if present:
            print(f"models already in {folder}/ ({', '.join(present)}): demo model not needed")
            return
    out = Path(args.out)
    fits = [(out, train.demo_frame)]
    fits += [(out.with_name(f"{sensor}{out.suffix}"), partial(train.simulator_frame, sensor))
             for sensor in filter(None, args.sensors.split(","))]
    for path, make_frame in fits:
        started = time.perf_counter()
        model, report = train.fit_prophet(make_frame())
        train.save_model(model, path, "json" if path.suffix == ".json" else "joblib")
        print(f"demo model written to {path} ({report.rows} rows, held-back MAE "
              f"{report.holdout_mae:.3f}, coverage {report.holdout_coverage:.0%}, "
              f"{time.perf_counter() - started:.1f}s)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model_worker", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the worker (the default)")
    fit = commands.add_parser("train", help="fit Prophet on stored readings or a CSV")
    source = fit.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-mongo", action="store_true", help="readings in MongoDB")
    source.add_argument("--csv", help="CSV with columns ds,y (or ts,value)")
    fit.add_argument("--sensor", required=True)
    fit.add_argument("--device", help="only this device's readings")
    fit.add_argument("--since", help="only readings this recent, e.g. 7d, 12h")
    fit.add_argument("--out", required=True, help="models/{sensor}.json or .joblib")
    fit.add_argument("--format", choices=("json", "joblib"), default=None)
    fit.add_argument("--plot", help="write a PNG of actual vs forecast here")
    demo = commands.add_parser("make-demo-model", help="fit a small Prophet on synthetic data")
    demo.add_argument("--out", default="models/default.json")
    demo.add_argument("--sensors", default="",
                      help="also fit {sensor}.json beside --out for these simulator sensors, "
                           "on the simulator's own synthetic data (e.g. temperature,humidity)")
    demo.add_argument("--if-missing", action="store_true",
                      help="do nothing when the folder of --out already holds a model")
    args = parser.parse_args(argv)
    if args.command == "train" and args.format is None:
        args.format = "joblib" if args.out.endswith((".joblib", ".pkl")) else "json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    configure_logging("model_worker", settings.log_level,
                      settings.log_format if args.command in (None, "run") else "text")
    try:
        if args.command == "train":
            run_train(settings, args)
        elif args.command == "make-demo-model":
            run_make_demo(args)
        else:
            run(settings)
    except EdgepipeError as exc:
        log.error("model worker cannot continue", extra={"error": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
