"""Measuring helpers the benchmarks share: percentiles, a results subscriber
that times each scored result against its device timestamp, a consumer-lag
sampler and a per-process CPU/RSS sampler. All sample from background threads
at a bounded rate, so measuring costs the measured machine little."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import orjson
import paho.mqtt.client as mqtt
import psutil
from confluent_kafka import Consumer, TopicPartition

from contracts.clients import kafka_consumer, mqtt_client, mqtt_connect
from contracts.settings import Settings


def percentiles(values: Sequence[float], qs: Sequence[float] = (0.5, 0.95, 0.99)
                ) -> dict[str, float | None]:
    """Nearest-rank percentiles, keyed p50/p95/p99; None for no values."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{round(q * 100)}"
        out[key] = (round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
                    if ordered else None)
    return out


@dataclass(slots=True)
class Arrival:
    event_id: str
    ts_ns: int
    arrived_ns: int

    @property
    def latency_ms(self) -> float:
        return (self.arrived_ns - self.ts_ns) / 1e6


class ResultsSubscriber:
    """Subscribes (QoS 1) to a results filter and keeps, per message, the event
    id, the device's timestamp and the wall-clock arrival time. Device and
    subscriber share this machine's clock."""

    def __init__(self, settings: Settings, topic_filter: str, client_id: str,
                 timeout_s: float = 15.0) -> None:
        self.arrivals: list[Arrival] = []
        self.undecodable = 0
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt_client(settings, client_id)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        mqtt_connect(self.client, settings)
        self.client.loop_start()
        if not subscribed.wait(timeout_s):
            self.close()
            raise TimeoutError(f"subscription to {topic_filter} not acknowledged")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time_ns()
        try:
            body = orjson.loads(msg.payload)
            arrival = Arrival(str(body["event_id"]), int(body["ts_ns"]), now)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.undecodable += 1
            return
        with self._lock:
            self.arrivals.append(arrival)

    def snapshot(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def distinct_ids(self) -> int:
        with self._lock:
            return len({a.event_id for a in self.arrivals})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Sampler:
    """Calls `sample()` every `interval_s` on a daemon thread until `stop()`."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def start(self) -> Self:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval_s)

    def sample(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class LagSampler(Sampler):
    """Consumer lag (end offsets minus committed offsets, summed over the
    topic's partitions) for each group, as (seconds since start, lag) pairs."""

    def __init__(self, settings: Settings, topic: str, partitions: int,
                 groups: dict[str, str], interval_s: float = 1.0) -> None:
        super().__init__(interval_s)
        self._topic = topic
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        # A consumer that never subscribes does not join its group: it only reads offsets.
        self._readers: dict[str, Consumer] = {
            name: kafka_consumer(settings, group) for name, group in groups.items()}
        self.series: dict[str, list[tuple[float, int]]] = {name: [] for name in groups}
        self.errors = 0

    def sample(self) -> None:
        at = round(time.monotonic() - self.started, 2)
        try:
            committed = {name: reader.committed(self._partitions, timeout=5)
                         for name, reader in self._readers.items()}
            # End offsets after the commits: a commit can never be ahead of them.
            any_reader = next(iter(self._readers.values()))
            ends = [any_reader.get_watermark_offsets(tp, timeout=5)[1]
                    for tp in self._partitions]
            for name, offsets in committed.items():
                lag = sum(max(0, end - max(tp.offset, 0))
                          for end, tp in zip(ends, offsets, strict=True))
                self.series[name].append((at, lag))
        except Exception:  # a missed sample must not end the benchmark; it is counted
            self.errors += 1

    def stop(self) -> None:
        super().stop()
        for reader in self._readers.values():
            reader.close()


@dataclass
class ProcessUsage:
    name: str
    process: psutil.Process
    peak_rss: int = 0
    cpu_at_start: float = 0.0
    cpu_at_end: float = 0.0
    gone: bool = False

    def cpu_seconds(self) -> float:
        try:
            times = self.process.cpu_times()
        except psutil.Error:
            self.gone = True
            return self.cpu_at_end
        return float(times.user + times.system)


class ResourceSampler(Sampler):
    """Peak RSS of every named process, sampled each second, and CPU used
    between `mark_start()` and `mark_end()` (as % of one core)."""

    def __init__(self, pids: dict[str, int], interval_s: float = 1.0) -> None:
        super().__init__(interval_s)
        self.usage = [ProcessUsage(name, psutil.Process(pid)) for name, pid in pids.items()]
        self._window = (0.0, 0.0)

    def sample(self) -> None:
        for usage in self.usage:
            try:
                usage.peak_rss = max(usage.peak_rss, usage.process.memory_info().rss)
            except psutil.Error:
                usage.gone = True

    def mark_start(self) -> None:
        for usage in self.usage:
            usage.cpu_at_start = usage.cpu_seconds()
        self._window = (time.monotonic(), 0.0)

    def mark_end(self) -> None:
        for usage in self.usage:
            usage.cpu_at_end = usage.cpu_seconds()
        self._window = (self._window[0], time.monotonic())

    def figures(self) -> dict[str, dict[str, float]]:
        elapsed = max(1e-9, self._window[1] - self._window[0])
        return {u.name: {"cpu_percent": round(100 * (u.cpu_at_end - u.cpu_at_start) / elapsed, 1),
                         "peak_rss_mb": round(u.peak_rss / 2**20, 1)} for u in self.usage}


def listening_pids(ports: dict[str, int]) -> dict[str, int]:
    """The pid listening on each named TCP port on this machine (the shared
    Mosquitto, Kafka, MongoDB-wire server); names whose owner is not visible
    are left out."""
    found: dict[str, int] = {}
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return found
    wanted = {port: name for name, port in ports.items()}
    for conn in connections:
        port = getattr(conn.laddr, "port", None)  # an empty tuple for unbound sockets
        if conn.status == psutil.CONN_LISTEN and conn.pid and port in wanted:
            found[wanted[port]] = conn.pid
    return found


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


Series = tuple[Sequence[float], Sequence[float]]


def plot_lines(path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, Series], *,
               logx: bool = False, logy: bool = False, symlogy: bool = False,
               hline: tuple[float, str] | None = None) -> Path:
    """One PNG of labelled lines (a one-point series shows as a marker);
    `symlogy`: logarithmic above 10 and linear below, so zeros stay drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i) for i in range(20)])
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3 if len(xs) > 20 else 6, label=label)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if symlogy:
        ax.set_yscale("symlog", linthresh=10)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram_seconds(port: int) -> dict[str, float]:
    """`_sum` of every step-duration histogram a service's /metrics serves, keyed
    by name and labels: differences over a window say where its time went."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        # Time spent in a step; not sizes, nor per-message latencies that overlap in flight.
        if family.type != "histogram" or not family.name.endswith("_seconds") \
                or "ack" in family.name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                sums[f"{family.name}{{{labels}}}" if labels else family.name] = sample.value
    return sums


def busy_share(before: dict[str, float], after: dict[str, float],
               seconds: float) -> dict[str, float]:
    """Seconds each histogram accumulated per second of the window."""
    return {name: round((value - before.get(name, 0.0)) / seconds, 3)
            for name, value in after.items() if value > before.get(name, 0.0)}


def clear_retained(settings: Settings, topic_filter: str, quiet_s: float = 1.0,
                   timeout_s: float = 60.0) -> int:
    """Deletes the retained messages under `topic_filter` (the worker retains
    each device's latest result), so a benchmark leaves nothing in the broker.
    Returns how many topics were cleared."""
    topics: set[str] = set()
    last_seen = [time.monotonic()]

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.payload:
            topics.add(msg.topic)
            last_seen[0] = time.monotonic()

    client = mqtt_client(settings)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
    mqtt_connect(client, settings)
    client.loop_start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and time.monotonic() - last_seen[0] < quiet_s:
        time.sleep(0.1)
    client.unsubscribe(topic_filter)
    infos = [client.publish(topic, b"", qos=1, retain=True) for topic in sorted(topics)]
    for info in infos:
        info.wait_for_publish(max(0.001, deadline - time.monotonic()))
    client.disconnect()
    client.loop_stop()
    return len(topics)
