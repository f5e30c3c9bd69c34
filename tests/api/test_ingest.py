"""`POST /ingest/sensor-logger` into the real Kafka: every sensor kind of the
app, the test push, tokens, and bad bodies answered 4xx with a dead letter."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from contracts.clients import kafka_consumer
from contracts.dead_letters import DeadLetter
from contracts.events import Reading
from contracts.settings import Settings

TOKEN = {"token": "edgepipe-local"}


def batch(now_ns: int) -> dict[str, Any]:
    """One entry per sensor kind the app sends, shaped as the app sends them."""
    entries: list[tuple[str, dict[str, Any]]] = [
        ("accelerometer", {"x": 0.12, "y": 9.78, "z": 0.31}),
        ("accelerometeruncalibrated", {"x": 0.13, "y": 9.8, "z": 0.3}),
        ("gyroscope", {"x": 0.01, "y": -0.02, "z": 0.003}),
        ("gyroscopeuncalibrated", {"x": 0.011, "y": -0.021, "z": 0.004}),
        ("magnetometer", {"x": 21.5, "y": -3.2, "z": -40.1}),
        ("magnetometeruncalibrated", {"x": 30.5, "y": -8.2, "z": -45.1}),
        ("gravity", {"x": 0.1, "y": 9.8, "z": 0.2}),
        ("orientation", {"qx": 0.1, "qy": 0.2, "qz": 0.3, "qw": 0.9, "roll": 0.01,
                         "pitch": 1.2, "yaw": -0.4}),
        ("barometer", {"pressure": 1013.2, "relativeAltitude": 0.4}),
        ("location", {"latitude": 52.52, "longitude": 13.405, "altitude": 34.0,
                      "speed": 0.0, "bearing": 0.0, "horizontalAccuracy": 5.0}),
        ("microphone", {"dBFS": -42.5}),
        ("light", {"lux": 312.0}),
        ("battery", {"batteryLevel": 0.81, "batteryState": "charging"}),
    ]
    return {"messageId": 7, "sessionId": "0c6a-session", "deviceId": "pixel-7",
            "payload": [{"name": name, "time": now_ns + i * 1_000_000, "values": values,
                         "accuracy": 3} for i, (name, values) in enumerate(entries)]}


def consume(settings: Settings, topic: str, want: int, timeout_s: float = 20) -> list[Any]:
    consumer = kafka_consumer(settings, f"api-test-{time.time_ns()}")
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    return messages


@pytest.fixture
def ingest_client(kafka_topics: Settings, client: TestClient) -> TestClient:
    return client


def test_batch_of_every_sensor_kind_reaches_kafka_before_200(
        ingest_client: TestClient, api_settings: Settings) -> None:
    body = batch(time.time_ns())
    response = ingest_client.post("/ingest/sensor-logger", params=TOKEN, json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 13}
    messages = consume(api_settings, api_settings.kafka_topic_readings, 13)
    readings = {Reading.from_json(m.value()).sensor: (m, Reading.from_json(m.value()))
                for m in messages}
    assert set(readings) == {e["name"] for e in body["payload"]}
    message, light = readings["light"]
    assert message.key() == b"pixel-7" and light.value == 312.0 and light.device_id == "pixel-7"
    assert readings["accelerometer"][1].values == {"x": 0.12, "y": 9.78, "z": 0.31}
    assert readings["battery"][1].value == 0.81  # the state string is left out
    assert (readings["location"][1].values or {})["latitude"] == 52.52


def test_test_push_with_empty_values_is_200(ingest_client: TestClient) -> None:
    body = {"messageId": 0, "sessionId": "s", "deviceId": "pixel-7",
            "payload": [{"name": "test", "time": time.time_ns(), "values": []}]}
    response = ingest_client.post("/ingest/sensor-logger",
                                  headers={"Authorization": "Bearer edgepipe-local"}, json=body)
    assert response.status_code == 200 and response.json() == {"accepted": 0}


@pytest.mark.parametrize("headers,params", [({}, {}), ({}, {"token": "wrong"}),
                                            ({"Authorization": "Bearer nope"}, {})])
def test_missing_or_wrong_token_is_401(ingest_client: TestClient, headers: dict[str, str],
                                       params: dict[str, str]) -> None:
    response = ingest_client.post("/ingest/sensor-logger", headers=headers, params=params,
                                  json=batch(time.time_ns()))
    assert response.status_code == 401


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"messageId": 1, "sessionId": "s", "deviceId": "p"}', "missing_field"),
    (b'{"messageId": 1, "sessionId": "s", "deviceId": {"$gt": ""}, "payload": [{"name":'
     b' "light", "time": 1763780400000000000, "values": {"lux": 1}}]}', "wrong_type"),
    (b'{"messageId": 1, "sessionId": "s", "deviceId": "$gt", "payload": [{"name":'
     b' "light", "time": 1763780400000000000, "values": {"lux": 1}}]}', "bad_id"),
    (b'{"messageId": 1, "sessionId": "s", "deviceId": "p", "payload": [{"name": "light",'
     b' "time": 1.5e18, "values": {"lux": 1}}]}', "wrong_type"),
    (b'{"messageId": 1, "sessionId": "s", "deviceId": "p", "payload": [{"name": "light",'
     b' "time": 1000, "values": {"lux": 1}}]}', "ts_out_of_range"),
    (b"\xff\xfe\x00", "not_utf8"),
])
def test_bad_bodies_are_4xx_and_dead_lettered(ingest_client: TestClient, api_settings: Settings,
                                              raw: bytes, reason: str) -> None:
    response = ingest_client.post("/ingest/sensor-logger", params=TOKEN, content=raw,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["reason"] == reason and response.json()["detail"]
    (message,) = consume(api_settings, api_settings.kafka_topic_dlq, 1)
    letter = DeadLetter.from_json(message.value())
    assert letter.reason == reason and letter.payload == raw
    assert letter.topic == "http:/ingest/sensor-logger"


def test_oversized_body_is_413(ingest_client: TestClient, api_settings: Settings) -> None:
    raw = orjson.dumps({"pad": "x" * (api_settings.bridge_max_payload_bytes + 10)})
    response = ingest_client.post("/ingest/sensor-logger", params=TOKEN, content=raw)
    assert response.status_code == 413
