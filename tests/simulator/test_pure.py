"""The simulator's pure parts: generators, CSV reading, payloads, ids, schedule, CLI."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from contracts.errors import ConfigError
from contracts.events import NS_PER_S
from contracts.settings import Settings
from edge_simulator.cli import build_parser, parse_config
from edge_simulator.csv_replay import load_csv, parse_time_ns
from edge_simulator.feeds import CsvFeed, SyntheticFeed, TickClock, device_ids
from edge_simulator.payloads import ImageEncoder, SensorLoggerEncoder, SensorsEncoder
from edge_simulator.samples import PROFILES, Sample, SyntheticSensor

REPO = Path(__file__).resolve().parents[2]
SEED_CSV = REPO.parent / "shared" / "data" / "seed_demo_data.csv"
DAY0_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z


def _series(name: str, seed: int, ticks: int, *, step_s: int = 60, **rates: float) -> list:
    sensor = SyntheticSensor(name, random.Random(seed), DAY0_NS,
                             spike_rate=rates.get("spike", 0.0),
                             dropout_rate=rates.get("dropout", 0.0),
                             anomaly_rate=rates.get("anomaly", 0.0))
    return [sensor.sample(DAY0_NS + i * step_s * NS_PER_S) for i in range(ticks)]


def test_synthetic_values_are_reproducible_with_a_seed_and_differ_without() -> None:
    assert _series("temperature", 7, 50) == _series("temperature", 7, 50)
    assert _series("temperature", 7, 50) != _series("temperature", 8, 50)


def test_temperature_follows_a_daily_cycle_warm_afternoon_cold_night() -> None:
    day = _series("temperature", 1, 24 * 60, step_s=60)
    by_hour = [statistics.mean(s.value for s in day[h * 60:(h + 1) * 60]) for h in range(24)]
    assert by_hour[15] - by_hour[3] > 5.0  # amplitude 4 °C: peak minus trough is ~8
    assert all(-40 <= s.value <= 85 for s in day)


def test_anomalies_are_clear_outliers_and_flagged() -> None:
    samples = _series("temperature", 3, 2000, anomaly=0.02)
    flagged = [s for s in samples if s.anomaly]
    normal = [s.value for s in samples if not s.anomaly]
    assert 15 <= len(flagged) <= 70
    mean, sd = statistics.mean(normal), statistics.pstdev(normal)
    assert all(abs(s.value - mean) > 4 * sd for s in flagged)


def test_dropouts_leave_gaps_and_vectors_have_axes() -> None:
    samples = _series("accelerometer", 5, 3000, dropout=0.01)
    gaps = sum(1 for s in samples if s is None)
    assert 30 < gaps < 1500
    present = [s for s in samples if s is not None]
    assert set(present[0].values) == {"x", "y", "z"}
    assert statistics.mean(s.values["z"] for s in present) == pytest.approx(9.81, abs=0.8)


def test_seed_csv_replays_as_is_bom_and_crlf() -> None:
    series = load_csv(SEED_CSV)
    assert series.columns == ("Image",)  # no BOM glued to the name
    assert series.times_ns is None
    assert [row[0] for row in series.rows] == [float(v) for v in range(1, 39)]


def test_csv_time_columns_in_any_unit_and_clear_errors(tmp_path: Path) -> None:
    assert parse_time_ns("1700000000") == 1_700_000_000 * NS_PER_S
    assert parse_time_ns("1700000000123") == 1_700_000_000_123_000_000
    assert parse_time_ns("1698501144401773000") == 1_698_501_144_401_773_000
    assert parse_time_ns("2024-01-02 03:04:05") == parse_time_ns("2024-01-02T03:04:05Z")
    good = tmp_path / "g.csv"
    good.write_text("timestamp,temp,hum\n2024-01-01 00:00:00,20.5,40\n"
                    "2024-01-01 00:00:10,21,\n")
    series = load_csv(good)
    assert series.columns == ("temp", "hum")
    assert series.rows[1] == (21.0, None)
    assert series.times_ns is not None
    assert series.times_ns[1] - series.times_ns[0] == 10 * NS_PER_S
    bad = tmp_path / "b.csv"
    bad.write_text("time,temp\n1700000000,20\n1700000001,warm\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_csv(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_csv(tmp_path / "missing.csv")


def test_csv_feed_keeps_file_spacing_at_any_speed_and_loops(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time,v\n100,1\n102,2\n106,3\n")
    start = 5_000 * NS_PER_S
    feed = CsvFeed(load_csv(path), 1.0, start, loop=True, keep_times=False,
                   anomaly_rate=0.0, rng=random.Random(0))
    assert [feed.offset_s(t) for t in range(4)] == [0.0, 2.0, 6.0, 9.0]  # loop: +mean gap 3
    assert [s.ts_ns for t in range(4) for s in feed.samples(t, 0)] == [
        start, start + 2 * NS_PER_S, start + 6 * NS_PER_S, start + 9 * NS_PER_S]
    once = CsvFeed(load_csv(path), 1.0, start, loop=False, keep_times=True,
                   anomaly_rate=0.0, rng=random.Random(0))
    assert once.offset_s(3) is None
    assert once.samples(0, 0)[0].ts_ns == 100 * NS_PER_S
    clock = TickClock(once, 1.0, speed=2.0, jitter=0.0, rng=random.Random(1))
    clock.begin(1000.0)
    first, third = clock.due(0), clock.due(2)
    assert first is not None and third is not None
    assert third - first == pytest.approx(3.0)  # 6 s of file time at 2x


def test_devices_do_not_start_in_lockstep() -> None:
    feed = SyntheticFeed([], 1.0)
    starts = []
    for i in range(50):
        clock = TickClock(feed, 1.0, 1.0, 0.1, random.Random(i))
        clock.begin(0.0)
        starts.append(clock.start)
    assert len({round(s, 3) for s in starts}) > 45
    assert all(0.0 <= s <= 1.0 for s in starts)


def test_ids_from_several_hostnames_are_distinct() -> None:
    hosts = ["3f2a9c1b7d4e", "8b1c0d2e3f4a", "a1b2c3d4e5f6"]  # compose replica container ids
    ids = [i for host in hosts for i in device_ids(40, hostname=host)]
    assert len(ids) == len(set(ids)) == 120
    assert device_ids(2, prefix="lab") == ["lab-0", "lab-1"]
    with pytest.raises(ConfigError):
        device_ids(1, prefix="bad/prefix")


def test_sensors_payload_matches_the_contract() -> None:
    encoder = SensorsEncoder("t/x/", "dev-1")
    messages = encoder.encode([Sample("temperature", DAY0_NS + 5_000_000, value=21.5, unit="°C"),
                               Sample("accelerometer", DAY0_NS, values={"x": 0.1}, unit="m/s²")])
    topic, body = messages[0]
    assert topic == "t/x/sensors/dev-1/temperature"
    assert orjson.loads(body) == {"ts": "2026-01-01T00:00:00.005Z", "value": 21.5,
                                  "unit": "°C", "seq": 0}
    assert orjson.loads(messages[1][1])["values"] == {"x": 0.1}
    assert orjson.loads(encoder.encode([Sample("temperature", DAY0_NS, value=1.0)])[0][1])[
        "seq"] == 1


def test_sensor_logger_batches_ticks_like_the_app() -> None:
    encoder = SensorLoggerEncoder("", "phone-1", "sess", ticks_per_message=3)
    ts = 1_698_501_144_401_773_001  # above 2**53: must survive as an exact int
    tick = [Sample("accelerometer", ts, values={"x": 1.0, "y": 2.0, "z": 3.0}),
            Sample("gyroscope", ts, values={"x": 0.1, "y": 0.2, "z": 0.3})]
    assert encoder.encode(tick) == [] and encoder.encode(tick) == []
    [(topic, body)] = encoder.encode(tick)
    doc = orjson.loads(body)
    assert topic == "sensor-logger"
    assert doc["messageId"] == 0 and doc["sessionId"] == "sess" and doc["deviceId"] == "phone-1"
    assert len(doc["payload"]) == 6
    assert doc["payload"][0] == {"name": "accelerometer", "time": ts,
                                 "values": {"x": 1.0, "y": 2.0, "z": 3.0}}
    assert doc["payload"][1]["accuracy"] == 3
    encoder.encode(tick)
    [(_, rest)] = encoder.flush()
    assert orjson.loads(rest)["messageId"] == 1


def test_image_payload_is_the_seed_format() -> None:
    [(topic, body)] = ImageEncoder("", "cam-7").encode(
        [Sample("Image", DAY0_NS + 3_600 * NS_PER_S + 999_000_000, value=17.0)])
    assert topic == "Image"
    assert orjson.loads(body) == {"sensorId": "cam-7", "image": "17",
                                  "collectedAt": "2026-01-01 01:00:00"}


def test_cli_checks_options_before_connecting(tmp_path: Path) -> None:
    settings = Settings()
    config = parse_config(["--devices", "3", "--rate", "10", "--format", "sensor-logger"],
                          settings)
    assert config.sensors == ("accelerometer", "gyroscope", "barometer")
    assert config.batch == 10
    for bad in (["--rate", "0"], ["--sensors", "nope"], ["--source", "csv"],
                ["--source", "csv", "--csv", str(tmp_path / "none.csv")],
                ["--format", "image", "--sensors", "accelerometer"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_config(bad, settings)
        assert exit_info.value.code == 2, bad
    documented = build_parser(settings).format_help()
    for action in build_parser(settings)._actions:
        assert action.help, action.dest
    for sensor in PROFILES:
        assert sensor in documented


def test_unreadable_csv_fails_at_start_with_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_simulator", "--source", "csv", "--csv",
         str(tmp_path / "absent.csv"), "--no-http"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot read CSV" in result.stderr and "absent.csv" in result.stderr
