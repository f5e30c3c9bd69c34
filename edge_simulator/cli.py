"""Command line: every option documented in `--help`, defaults from settings
(SIMULATOR_* environment variables), all checked before any device connects."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import ConfigError
from contracts.settings import Settings
from edge_simulator.csv_replay import CsvSeries, load_csv
from edge_simulator.payloads import FORMATS
from edge_simulator.samples import PROFILES, check_sensor_names

DEFAULT_SENSORS = {"sensor-logger": "accelerometer,gyroscope,barometer"}
FALLBACK_SENSORS = "temperature,humidity"

DESCRIPTION = """\
Simulates a fleet of edge devices. Each device is its own MQTT client (own
client id, QoS 1, reconnect with backoff, a bounded outbox kept while the
broker is away). Defaults come from SIMULATOR_* / MQTT_* settings."""

EPILOG = """\
formats:
  sensors        sensors/{device}/{sensor}: {"ts", "value"|"values", "unit", "seq"}
  sensor-logger  sensor-logger: the Sensor Logger app's batches
                 {"messageId", "sessionId", "deviceId", "payload": [{"name", "time", "values"}]}
  image          Image: the seed pipeline's {"sensorId", "image", "collectedAt"}
synthetic sensors: """ + ", ".join(PROFILES) + """
examples:
  python -m edge_simulator --devices 100 --rate 10 --source synthetic
  python -m edge_simulator --source csv --csv data.csv --format image --speed 10 --loop"""


@dataclass(frozen=True, slots=True)
class SimConfig:
    devices: int
    device_prefix: str
    rate_hz: float
    jitter: float
    source: str
    format: str
    sensors: tuple[str, ...]
    csv: CsvSeries | None
    keep_csv_times: bool
    speed: float
    loop: bool
    duration_s: float | None
    count: int | None
    batch: int
    anomaly_rate: float
    spike_rate: float
    dropout_rate: float
    seed: int | None
    topic_prefix: str
    outbox_limit: int
    inflight: int
    drain_timeout_s: float
    progress_interval_s: float
    http_port: int | None  # None: no ops endpoint
    # devices.csv of generated accounts: each device claims one (its id = user name).
    credentials_file: Path | None = None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    s = settings
    p = argparse.ArgumentParser(
        prog="python -m edge_simulator", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--devices", type=_positive_int, default=s.simulator_devices,
        help="devices (MQTT connections) in this process (default %(default)s)")
    add("--device-prefix", default=s.simulator_device_prefix,
        help="device ids are PREFIX-0..N-1 (default: this host name, so compose replicas differ)")
    add("--rate", type=_positive_float, default=s.simulator_rate_hz,
        help="ticks per second per device; each tick samples every sensor (default %(default)s)")
    add("--jitter", type=_fraction, default=s.simulator_jitter,
        help="random shift of each tick, as a fraction of the period (default %(default)s)")
    add("--source", choices=("synthetic", "csv"), default=s.simulator_source,
        help="where values come from (default %(default)s)")
    add("--format", choices=FORMATS, default=s.simulator_format,
        help="message format and topic, see below (default %(default)s)")
    add("--sensors", default=s.simulator_sensors,
        help=f"synthetic sensors, comma-separated (default {FALLBACK_SENSORS}; for "
             f"sensor-logger {DEFAULT_SENSORS['sensor-logger']})")
    add("--csv", type=Path, default=s.simulator_csv_path,
        help="CSV file to replay with --source csv: a header row, a time column or none")
    add("--csv-time-column", default=None,
        help="the CSV's time column (default: one named ts, timestamp, time, datetime, "
             "date, collectedAt; none: rows are --rate apart)")
    add("--keep-csv-times", action="store_true",
        help="send the CSV's own times instead of moving them to start now")
    add("--speed", type=_positive_float, default=1.0,
        help="replay this many times faster than real time; device times keep their "
             "spacing (default %(default)s)")
    add("--loop", action="store_true", help="replay the CSV again from the top at its end")
    add("--duration", type=_positive_float, default=None,
        help="stop after this many seconds (default: run until the data ends or Ctrl-C)")
    add("--count", type=_positive_int, default=None,
        help="stop each device after this many ticks")
    add("--batch", type=_positive_int, default=None,
        help="ticks per sensor-logger message, the app's batch period times the rate "
             "(default: one message a second)")
    add("--anomaly-rate", type=_fraction, default=s.simulator_anomaly_rate,
        help="probability that a sample is a clear anomaly (default %(default)s)")
    add("--spike-rate", type=_fraction, default=0.001,
        help="probability of an ordinary spike in a synthetic sample (default %(default)s)")
    add("--dropout-rate", type=_fraction, default=0.001,
        help="probability that a synthetic sensor goes silent for 2-30 ticks (default %(default)s)")
    add("--seed", type=int, default=s.simulator_seed,
        help="seed for reproducible values, offsets and jitter (default: random)")
    add("--credentials", type=Path, default=s.simulator_credentials_file,
        help="devices.csv of generated MQTT accounts (python -m contracts.credentials): "
             "each device claims a free one and uses its id; --device-prefix is then "
             "ignored (default: every device uses MQTT_USERNAME, the operator account)")
    add("--topic-prefix", default=s.simulator_topic_prefix,
        help="prepended to every topic as is, e.g. t/run1/ (default none)")
    add("--outbox-limit", type=_positive_int, default=s.simulator_outbox_limit,
        help="messages each device keeps while the broker is away; the oldest are dropped "
             "beyond it (default %(default)s)")
    add("--inflight", type=_positive_int, default=s.simulator_inflight_window,
        help="unacknowledged QoS 1 messages per device (default %(default)s)")
    add("--drain-timeout", type=float, default=s.simulator_drain_timeout_s,
        help="seconds to wait for acks and outboxes at exit (default %(default)s)")
    add("--progress-interval", type=_positive_float, default=s.simulator_progress_interval_s,
        help="seconds between progress log lines when not on a terminal (default %(default)s)")
    add("--http-port", type=int, default=s.simulator_http_port,
        help="port of /health, /ready and /metrics; 0 picks a free one (default %(default)s)")
    add("--no-http", action="store_true", default=not s.simulator_http_enabled,
        help="do not serve /health, /ready and /metrics")
    return p


def parse_config(argv: list[str] | None, settings: Settings) -> SimConfig:
    """Exits with status 2 and a clear message on a bad option or unreadable CSV."""
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    try:
        return _to_config(args)
    except ConfigError as exc:
        parser.error(str(exc))


def _to_config(args: argparse.Namespace) -> SimConfig:
    sensors_text = args.sensors or DEFAULT_SENSORS.get(args.format, FALLBACK_SENSORS)
    sensors = tuple(name.strip() for name in sensors_text.split(",") if name.strip())
    csv = None
    if args.source == "csv":
        if args.csv is None:
            raise ConfigError("--source csv needs --csv PATH (or SIMULATOR_CSV_PATH)")
        csv = load_csv(args.csv, args.csv_time_column)
    else:
        check_sensor_names(list(sensors))
        if args.format == "image" and all(PROFILES[n].axes for n in sensors):
            raise ConfigError("--format image carries one number; give a scalar sensor")
    if not 0 <= args.http_port <= 65535:
        raise ConfigError(f"--http-port must be 0..65535, got {args.http_port}")
    if args.drain_timeout < 0:
        raise ConfigError("--drain-timeout must be >= 0")
    if any(ch in args.topic_prefix for ch in "+#\x00"):
        raise ConfigError("--topic-prefix must not contain MQTT wildcards")
    if args.credentials is not None:
        # The broker's ACL lets a device account write sensors/{its id}/# and nothing
        # else; anything else would be refused message by message.
        if args.format != "sensors":
            raise ConfigError(
                f"--format {args.format} publishes on a shared topic that device accounts may "
                "not write (the device id is inside the payload, where the broker cannot "
                "check it); use --format sensors, or no --credentials with the gateway "
                "or operator account (MQTT_USERNAME)")
        if args.topic_prefix:
            raise ConfigError("--topic-prefix cannot be used with --credentials: device "
                              "accounts may only write sensors/{device}/...")
    return SimConfig(
        devices=args.devices, device_prefix=args.device_prefix, rate_hz=args.rate,
        jitter=args.jitter, source=args.source, format=args.format, sensors=sensors, csv=csv,
        keep_csv_times=args.keep_csv_times, speed=args.speed, loop=args.loop,
        duration_s=args.duration, count=args.count,
        batch=args.batch or max(1, round(args.rate)), anomaly_rate=args.anomaly_rate,
        spike_rate=args.spike_rate, dropout_rate=args.dropout_rate, seed=args.seed,
        topic_prefix=args.topic_prefix, outbox_limit=args.outbox_limit, inflight=args.inflight,
        drain_timeout_s=args.drain_timeout, progress_interval_s=args.progress_interval,
        http_port=None if args.no_http else args.http_port, credentials_file=args.credentials)
