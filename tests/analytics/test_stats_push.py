"""Statistics on MQTT are coalesced per series (ANALYTICS_STATS_PUSH_INTERVAL_S):
the pure `StatsPush` keeps the latest snapshot per series, and against the real
broker a subscriber gets fewer messages than batches when batches come fast,
yet always the final snapshot of every series - after an idle tick without new
readings as well as on shutdown."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from pymongo import MongoClient

from contracts.clients import kafka_producer, mqtt_client, mqtt_connect
from contracts.settings import Settings
from model_worker.analytics.engine import AnalyticsEngine, WindowPolicy
from model_worker.analytics.push import StatsPush
from model_worker.analytics.stage import AnalyticsStage
from tests.analytics.test_stage_services import analytics_settings, batches, make_stream
from tests.support import MqttCollector

STATS_KEYS = ("count", "mean", "m2", "min", "max", "last_ts_ns", "last_value")


@dataclass
class Series:
    """A stand-in for the engine's live series: its document is built when pushed."""

    series_id: str
    count: int
    built: int = 0

    def stats_document(self) -> dict[str, Any]:
        self.built += 1
        return doc(self.series_id, self.count)


def doc(series: str, count: int) -> dict[str, Any]:
    return {"_id": series, "count": count}


def test_latest_snapshot_per_series_within_the_interval() -> None:
    sent: list[list[dict[str, Any]]] = []
    push = StatsPush(1.0, sent.append)
    start = push._pushed_at
    a, b = Series("a", 1), Series("b", 1)
    push.offer([a, b], start + 0.1)
    a.count = 2
    push.offer([a], start + 0.5)
    assert sent == [] and len(push) == 2
    push.push_if_due(start + 0.9)
    assert sent == [] and a.built == 0, "no document built before its push"
    a.count = 3
    push.offer([a], start + 1.0)  # the interval is up: all held ones go
    assert sent == [[doc("a", 3), doc("b", 1)]] and len(push) == 0
    assert (a.built, b.built) == (1, 1)
    b.count = 2
    push.offer([b], start + 1.5)
    push.push_if_due(start + 2.0)  # no new reading needed
    assert sent[-1] == [doc("b", 2)]
    push.push_if_due(start + 9.0)  # nothing held: nothing sent
    assert len(sent) == 2


def test_a_quiet_series_is_pushed_at_once_and_push_empties() -> None:
    sent: list[list[dict[str, Any]]] = []
    push = StatsPush(1.0, sent.append)
    a = Series("a", 1)
    push.offer([a], push._pushed_at + 5.0)  # nothing pushed for longer than 1 s
    assert sent == [[doc("a", 1)]]
    a.count = 2
    push.offer([a], push._pushed_at + 0.1)
    push.push()  # flush, revoke, shutdown
    assert sent[-1] == [doc("a", 2)] and len(push) == 0


def test_interval_zero_publishes_every_batch() -> None:
    sent: list[list[dict[str, Any]]] = []
    push = StatsPush(0.0, sent.append)
    push.offer([Series("a", 1)], 0.0)
    push.offer([Series("a", 2)], 0.0)
    push.offer([], 0.0)
    assert sent == [[doc("a", 1)], [doc("a", 2)]] and len(push) == 0


@pytest.fixture
def publisher(mqtt_ready: Settings) -> Iterator[mqtt.Client]:
    client = mqtt_client(mqtt_ready)
    mqtt_connect(client, mqtt_ready)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.is_connected()
    yield client
    client.loop_stop()
    client.disconnect()


def push_settings(settings: Settings, unique: str, interval_s: float) -> Settings:
    return analytics_settings(settings).model_copy(update={
        "analytics_mqtt_stats_topic": f"t/{unique}/analytics/{{device_id}}/{{sensor}}/stats",
        "analytics_mqtt_window_topic": f"t/{unique}/analytics/{{device_id}}/{{sensor}}/window",
        "analytics_stats_push_interval_s": interval_s})


def expected_stats(settings: Settings, parts: list[Any]) -> tuple[dict[str, dict], Counter[str]]:
    """Final statistics per series, and in how many batches each series changed."""
    engine = AnalyticsEngine(WindowPolicy.from_settings(settings))
    final: dict[str, dict] = {}
    changed: Counter[str] = Counter()
    for batch in parts:
        out = engine.apply(batch.readings, batch.partitions, batch.offsets, 0)
        for state in out.stats:
            final[state.series_id] = state.stats_document()
            changed[state.series_id] += 1
    return final, changed


def wait_for_final(collector: MqttCollector, final: dict[str, dict],
                   timeout_s: float = 15.0) -> dict[str, dict]:
    """The last statistics message received per series, once each carries its final count."""
    deadline = time.monotonic() + timeout_s
    while True:
        latest = {m["_id"]: m for m in list(collector.messages) if "last_value" in m}
        if all(latest.get(k, {}).get("count") == d["count"] for k, d in final.items()) \
                or time.monotonic() > deadline:
            return latest
        time.sleep(0.1)


@pytest.mark.parametrize("interval_s", [5.0, 0.0])
def test_subscriber_gets_final_snapshots_and_fewer_messages_than_batches(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]], publisher: mqtt.Client,
        unique: str, interval_s: float) -> None:
    settings = push_settings(kafka_topics, unique, interval_s)
    parts = batches(make_stream(3, 3000), 100)
    final, changed = expected_stats(settings, parts)
    collector = MqttCollector(settings, f"t/{unique}/analytics/+/+/stats")
    try:
        stage = AnalyticsStage(settings, kafka_producer(settings), mongo[settings.mongo_db],
                               publisher)
        started = time.monotonic()
        for batch in parts:
            stage.handle(batch, now_ns=0)
        # All batches inside one push interval (5 s: so on a loaded machine too).
        fast = time.monotonic() - started < interval_s * 0.9
        stage.close()
        assert len(stage.stats_push) == 0, "nothing held back after shutdown"
        latest = wait_for_final(collector, final)
        assert set(latest) == set(final)
        for series, expected in final.items():
            assert {k: latest[series][k] for k in STATS_KEYS} == \
                {k: expected[k] for k in STATS_KEYS}, series
        time.sleep(0.5)  # anything still in flight
        sent = Counter(m["_id"] for m in list(collector.messages))
        if interval_s == 0:
            assert sent == changed, "interval 0: one message per series per batch, as before"
        elif fast:
            assert all(sent[s] <= 2 for s in final), sent
            assert sum(sent.values()) < sum(changed.values()) / 10
        else:  # a very slow machine: still never more than one per series per batch
            assert all(sent[s] <= changed[s] for s in final)
    finally:
        collector.close()


def test_idle_tick_pushes_held_snapshots_without_new_readings(
        kafka_topics: Settings, mongo: MongoClient[dict[str, Any]], publisher: mqtt.Client,
        unique: str) -> None:
    settings = push_settings(kafka_topics, unique, 0.5)
    parts = batches(make_stream(4, 600), 100)
    final, _ = expected_stats(settings, parts)
    collector = MqttCollector(settings, f"t/{unique}/analytics/+/+/stats")
    stage = AnalyticsStage(settings, kafka_producer(settings), mongo[settings.mongo_db],
                           publisher)
    try:
        for batch in parts:
            stage.handle(batch, now_ns=0)
        time.sleep(0.6)
        stage.tick(0)  # the loop's idle tick: no reading, no idle window (now_ns 0)
        assert len(stage.stats_push) == 0
        latest = wait_for_final(collector, final)
        assert {k: d["count"] for k, d in latest.items()} == \
            {k: d["count"] for k, d in final.items()}
    finally:
        stage.close()
        collector.close()
