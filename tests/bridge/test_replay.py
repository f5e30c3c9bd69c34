"""replay-dlq against the real MongoDB-wire server and Kafka: after a route is
added, dead letters that now decode are re-fed and marked; the rest stay."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.replay import replay_dead_letters
from bridge.routes import SHIPPED_ROUTES
from contracts.clients import kafka_consumer
from contracts.dead_letters import DeadLetter
from contracts.settings import Settings

pytestmark = pytest.mark.services


def store(mongo: Any, settings: Settings, letters: list[DeadLetter]) -> None:
    mongo[settings.mongo_db]["dead_letters"].insert_many([d.to_document() for d in letters])


def run_replay(settings: Settings, capsys: pytest.CaptureFixture[str], **kwargs: Any
               ) -> dict[str, Any]:
    options = {"since": None, "limit": None, "dry_run": False, **kwargs}
    assert replay_dead_letters(settings, **options) == 0
    return orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])


def kafka_values(settings: Settings, expected: int, timeout: float = 15.0) -> list[bytes]:
    consumer = kafka_consumer(settings, f"replay-check-{time.monotonic_ns()}")
    consumer.subscribe([settings.kafka_topic_readings])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(values) < expected:
            values += [m.value() or b"" for m in consumer.consume(100, 0.5) if m.error() is None]
        values += [m.value() or b"" for m in consumer.consume(100, 1.0) if m.error() is None]
    finally:
        consumer.close()
    return values


def test_replay_refeeds_what_the_current_routes_decode(
        services: Settings, mongo: Any, unique: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"t/{unique}/"
    now_ns = time.time_ns()
    unrouted = DeadLetter("no_route", "no route", f"{prefix}lab/dev9/temp", None, None,
                          orjson.dumps({"ts": now_ns / 1e9, "value": 4.5}), now_ns)
    still_bad = DeadLetter("wrong_type", "value must be a number", f"{prefix}sensors/d1/temp",
                           "sensors", "json_reading", b'{"ts": 1763788000, "value": "x"}',
                           now_ns + 1)
    from_sink = DeadLetter("bad_record", "junk", "kafka:readings", None, None, b"junk",
                           now_ns + 2)
    store(mongo, services, [unrouted, still_bad, from_sink])
    settings = services.model_copy(update={"bridge_topic_prefix": prefix})

    before = run_replay(settings, capsys)
    assert before["replayed"] == 0
    assert before["still_failing"] == {"no_route": 1, "wrong_type": 1, "not_mqtt": 1}

    routes = tmp_path / "routes.yaml"
    routes.write_text(SHIPPED_ROUTES.read_text() + (
        "\n  - name: lab\n    topic: \"lab/{device_id}/{sensor}\"\n    codec: json_reading\n"))
    fixed = settings.model_copy(update={"bridge_routes_path": routes})
    assert run_replay(fixed, capsys, dry_run=True)["replayed"] == 1
    dead_letters = mongo[services.mongo_db]["dead_letters"]
    assert dead_letters.count_documents({"replayed_at": {"$exists": True}}) == 0

    after = run_replay(fixed, capsys)
    assert (after["replayed"], after["readings"]) == (1, 1)
    assert after["still_failing"] == {"wrong_type": 1, "not_mqtt": 1}
    marked = dead_letters.find_one({"_id": unrouted.id})
    assert marked is not None and len(marked["replayed_event_ids"]) == 1
    replayed = [orjson.loads(v) for v in kafka_values(services, 1)]
    assert [(r["device_id"], r["sensor"], r["value"]) for r in replayed] == [("dev9", "temp", 4.5)]
    assert replayed[0]["event_id"] == marked["replayed_event_ids"][0]
    assert dead_letters.find_one({"_id": still_bad.id})["last_replay_reason"] == "wrong_type"

    again = run_replay(fixed, capsys)
    assert (again["examined"], again["replayed"]) == (2, 0)
