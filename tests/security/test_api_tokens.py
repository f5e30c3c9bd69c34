"""The API's tokens on the real app (lifespan with MongoDB, Kafka and MQTT):
ingest refuses a wrong API_INGEST_TOKEN; with API_READ_TOKEN set every read
endpoint refuses a request without it or with a wrong one (401, JSON) and
answers with it, in each of the three ways it may be presented; operations
endpoints stay open."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pymongo import MongoClient

from api.main import create_app
from contracts.settings import Settings
from tests.support import wait_for

READ_TOKEN = "read-secret-for-the-test"
READS = ["/devices", "/readings?device_id=d-1&sensor=temperature",
         "/analytics?device_id=d-1&sensor=temperature",
         "/windows?device_id=d-1&sensor=temperature&size_s=60",
         "/stats?device_id=d-1"]
OPEN = ["/health", "/ready", "/metrics", "/", "/dashboard/config"]


@pytest.fixture
def app_settings(services: Settings, mongo: MongoClient[dict[str, Any]]) -> Settings:
    return services.model_copy(update={
        "api_read_token": SecretStr(READ_TOKEN),
        "api_ingest_token": SecretStr("ingest-secret-for-the-test"),
        "mqtt_results_topic": f"t/{services.mongo_db}/analytics/{{device_id}}/{{sensor}}"})


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200, 15,
                 "the API ready (MongoDB, Kafka, its MQTT subscription)")
        yield test_client


def test_wrong_ingest_token_is_401(client: TestClient) -> None:
    body = {"messageId": 1, "sessionId": "s", "deviceId": "d-1", "payload": []}
    for params, headers in (({"token": "wrong"}, {}), ({}, {"Authorization": "Bearer wrong"}),
                            ({}, {})):
        response = client.post("/ingest/sensor-logger", params=params, headers=headers,
                               json=body)
        assert response.status_code == 401, (params, headers, response.text)
        assert response.json()["detail"] == "missing or wrong ingest token"
    ok = client.post("/ingest/sensor-logger", params={"token": "ingest-secret-for-the-test"},
                     json=body)
    assert ok.status_code == 200, ok.text
    assert ok.json()["accepted"] == 0


@pytest.mark.parametrize("path", READS)
def test_reads_need_the_read_token(client: TestClient, path: str) -> None:
    sep = "&" if "?" in path else "?"
    refused = [client.get(path),
               client.get(path, headers={"Authorization": "Bearer wrong"}),
               client.get(path, headers={"X-Token": "wrong"}),
               client.get(f"{path}{sep}token=wrong"),
               client.get(path, headers={"Authorization": f"Basic {READ_TOKEN}"})]
    for response in refused:
        assert response.status_code == 401, (path, response.text)
        assert response.json() == {"detail": "missing or wrong read token (API_READ_TOKEN)"}
        assert response.headers["www-authenticate"] == "Bearer"
    accepted = [client.get(path, headers={"Authorization": f"Bearer {READ_TOKEN}"}),
                client.get(path, headers={"X-Token": READ_TOKEN}),
                client.get(f"{path}{sep}token={READ_TOKEN}")]
    for response in accepted:
        assert response.status_code == 200, (path, response.text)


def test_stream_needs_the_read_token(client: TestClient) -> None:
    assert client.get("/stream").status_code == 401
    assert client.get("/stream?token=wrong").status_code == 401
    # With the token the request gets past the check to query validation (a valid
    # query would stream forever, which a test client cannot end).
    response = client.get(f"/stream?since=not-a-time&token={READ_TOKEN}")
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["query", "since"]]


def test_metrics_computation_needs_the_read_token(client: TestClient) -> None:
    body = {"device_id": "d-1", "sensor": "temperature"}
    assert client.post("/compute/metrics", json=body).status_code == 401
    response = client.post("/compute/metrics", json=body, headers={"X-Token": READ_TOKEN})
    assert response.status_code != 401, response.text


@pytest.mark.parametrize("path", OPEN)
def test_operations_stay_open(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, response.text


def test_reads_are_open_without_a_read_token(services: Settings,
                                             mongo: MongoClient[dict[str, Any]]) -> None:
    settings = services.model_copy(update={"api_read_token": SecretStr("")})
    with TestClient(create_app(settings)) as client:
        assert client.get("/devices").status_code == 200
