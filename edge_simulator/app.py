"""Assembles a fleet from a `SimConfig` and runs it, with progress reports,
Prometheus metrics and `/health` + `/ready`."""

from __future__ import annotations

import logging
import random
import selectors
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import SecretStr

from contracts.clients import mqtt_client
from contracts.credentials import CredentialsError, claim_devices, release_devices
from contracts.errors import ConfigError
from contracts.ops import OpsServer
from contracts.settings import Settings
from edge_simulator.cli import SimConfig
from edge_simulator.device import Device, FleetCounters
from edge_simulator.feeds import CsvFeed, Feed, SyntheticFeed, TickClock, device_ids
from edge_simulator.fleet import DeviceRun, Fleet, Reporter, Snapshot
from edge_simulator.payloads import make_encoder
from edge_simulator.samples import SyntheticSensor

log = logging.getLogger("edge_simulator")


def _rng(seed: int | None, *parts: str) -> random.Random:
    # String seeds hash with SHA-512, so they are stable across runs and hosts.
    return random.Random(":".join((str(seed), *parts))) if seed is not None else random.Random()


def build_runs(config: SimConfig, settings: Settings, selector: selectors.BaseSelector,
               counters: FleetCounters, hostname: str | None = None,
               accounts: list[tuple[str, str]] | None = None) -> list[DeviceRun]:
    """One run per device; with `accounts` ((device_id, password) pairs) each
    device is that account, else devices are named from the prefix and all use
    the settings' MQTT user."""
    period_s = 1.0 / config.rate_hz
    start_ns = time.time_ns()
    runs = []
    passwords = dict(accounts) if accounts is not None else {}
    names = ([device_id for device_id, _ in accounts] if accounts is not None
             else device_ids(config.devices, config.device_prefix, hostname))
    for device_id in names:
        rng = _rng(config.seed, device_id)
        feed: Feed
        if config.csv is not None:
            feed = CsvFeed(config.csv, period_s, start_ns, loop=config.loop,
                           keep_times=config.keep_csv_times, anomaly_rate=config.anomaly_rate,
                           rng=_rng(config.seed, device_id, "csv"))
        else:
            feed = SyntheticFeed([
                SyntheticSensor(name, _rng(config.seed, device_id, name), start_ns,
                                spike_rate=config.spike_rate, dropout_rate=config.dropout_rate,
                                anomaly_rate=config.anomaly_rate)
                for name in config.sensors], period_s)
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        encoder = make_encoder(config.format, config.topic_prefix, device_id,
                               session_id=session_id, ticks_per_message=config.batch)
        account = settings
        if device_id in passwords:
            account = settings.model_copy(update={
                "mqtt_username": device_id, "mqtt_password": SecretStr(passwords[device_id])})
        client = mqtt_client(account, client_id=f"sim-{device_id}")
        device = Device(device_id, client, selector, counters, outbox_limit=config.outbox_limit,
                        window=config.inflight, rng=rng)
        clock = TickClock(feed, period_s, config.speed, config.jitter, rng)
        runs.append(DeviceRun(device, feed, encoder, clock))
    return runs


class FleetCollector:
    """Reads the fleet's counters at scrape time: nothing per message."""

    def __init__(self, counters: FleetCounters, devices: int) -> None:
        self._counters = counters
        self._devices = devices

    def collect(self) -> Iterator[Metric]:
        c = self._counters
        for name, value, text in (
                ("simulator_messages_sent", c.sent, "messages handed to MQTT at QoS 1"),
                ("simulator_messages_acked", c.acked, "messages the broker acknowledged"),
                ("simulator_messages_dropped", c.dropped, "messages pushed out of full outboxes"),
                ("simulator_messages_refused", c.refused,
                 "messages the broker refused (PUBACK failure, e.g. not authorized)"),
                ("simulator_reconnects", c.reconnects, "successful reconnections"),
                ("simulator_connect_failures", c.connect_failures, "failed connection attempts"),
                ("simulator_anomalies_injected", c.anomalies, "samples made clear anomalies")):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily("simulator_devices", "simulated devices", value=self._devices)
        yield GaugeMetricFamily("simulator_devices_connected", "devices connected",
                                value=c.connected)
        yield GaugeMetricFamily("simulator_messages_queued",
                                "messages in outboxes or awaiting PUBACK", value=c.queued)


def progress_reporter(stream: TextIO, is_tty: bool) -> Reporter:
    """A live line on a terminal; one JSON log line per interval otherwise."""
    def report(snap: Snapshot) -> None:
        if is_tty:
            stream.write(
                f"\r{snap.elapsed_s:7.1f}s  connected {snap.connected}/{snap.devices}  "
                f"sent {snap.sent}  acked {snap.acked}  queued {snap.queued}  "
                f"dropped {snap.dropped}  refused {snap.refused}  reconnects {snap.reconnects}  "
                f"{snap.acked_per_s:.0f} msg/s\x1b[K")
            stream.flush()
        else:
            log.info("progress", extra=snap.as_dict())
    return report


def run_simulator(config: SimConfig, settings: Settings, stop: threading.Event, *,
                  report: Reporter | None = None, hostname: str | None = None,
                  ops_port_ready: Any = None) -> Snapshot:
    """Runs until done or `stop`; returns the final counts. `ops_port_ready`,
    if given, is called with the port of the ops endpoint once it serves."""
    accounts = None
    if config.credentials_file is not None:
        try:
            accounts = claim_devices(config.credentials_file, config.devices)
        except CredentialsError as exc:
            raise ConfigError(str(exc)) from exc
    try:
        return _run(config, settings, stop, report, hostname, ops_port_ready, accounts)
    finally:
        if accounts is not None and config.credentials_file is not None:
            # Given back at exit, so replicas that come and go do not use up the file.
            release_devices(config.credentials_file, [d for d, _ in accounts])


def _run(config: SimConfig, settings: Settings, stop: threading.Event,
         report: Reporter | None, hostname: str | None, ops_port_ready: Any,
         accounts: list[tuple[str, str]] | None) -> Snapshot:
    selector = selectors.DefaultSelector()
    counters = FleetCounters()
    runs = build_runs(config, settings, selector, counters, hostname, accounts)
    is_tty = report is None and sys.stderr.isatty()
    interval = 1.0 if is_tty else config.progress_interval_s
    fleet = Fleet(settings, runs, counters, selector, ticks_per_device=config.count,
                  duration_s=config.duration_s, drain_timeout_s=config.drain_timeout_s,
                  progress_interval_s=interval,
                  report=report or progress_reporter(sys.stderr, is_tty))
    ops = None
    if config.http_port is not None:
        registry = CollectorRegistry()
        registry.register(FleetCollector(counters, len(runs)))

        def ready() -> tuple[bool, dict[str, Any]]:
            return counters.connected > 0, {"devices": len(runs),
                                            "connected": counters.connected}

        ops = OpsServer("0.0.0.0", config.http_port, ready, registry).start()
        if ops_port_ready is not None:
            ops_port_ready(ops.port)
    log.info("simulator starting", extra={
        "devices": len(runs), "first_device": runs[0].device.device_id,
        "rate_hz": config.rate_hz, "source": config.source, "format": config.format,
        "broker": f"{settings.mqtt_host}:{settings.mqtt_port}"})
    try:
        final = fleet.run(stop)
    finally:
        if is_tty:
            sys.stderr.write("\n")
        if ops is not None:
            ops.stop()
        selector.close()
    log.info("simulator finished", extra=final.as_dict())
    return final

