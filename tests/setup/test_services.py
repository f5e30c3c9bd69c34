"""Smoke tests: each real local service answers over a real connection."""

import base64
import threading
import urllib.error
import urllib.request
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from pydantic import SecretStr
from pymongo import MongoClient

from contracts.clients import kafka_consumer, kafka_producer, mqtt_client, mqtt_connect
from contracts.settings import Settings


def test_mqtt_round_trip_with_auth(mqtt_ready: Settings, unique: str) -> None:
    topic = f"t/{unique}/smoke"
    got: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        arrived.set()

    sub = mqtt_client(mqtt_ready, f"smoke-sub-{unique}")
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = on_message
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    mqtt_connect(sub, mqtt_ready)
    sub.loop_start()
    pub = mqtt_client(mqtt_ready, f"smoke-pub-{unique}")
    mqtt_connect(pub, mqtt_ready)
    pub.loop_start()
    try:
        assert subscribed.wait(10), "subscription not acknowledged"
        info = pub.publish(topic, b"hello edgepipe", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
        assert arrived.wait(10), "message did not come back"
        assert got == [b"hello edgepipe"]
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()


def test_mqtt_refuses_wrong_password(mqtt_ready: Settings, unique: str) -> None:
    bad = mqtt_ready.model_copy(update={"mqtt_password": SecretStr("definitely-wrong")})
    outcome: list[Any] = []
    done = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        outcome.append(rc)
        done.set()

    client = mqtt_client(bad, f"smoke-bad-{unique}")
    client.on_connect = on_connect
    mqtt_connect(client, bad)
    client.loop_start()
    try:
        assert done.wait(10)
        assert outcome[0].is_failure, f"broker accepted a wrong password: {outcome[0]}"
    finally:
        client.disconnect()
        client.loop_stop()


def test_kafka_produce_consume(kafka_topics: Settings, unique: str) -> None:
    topic = kafka_topics.kafka_topic_readings
    producer = kafka_producer(kafka_topics)
    delivered: list[Any] = []
    producer.produce(topic, key=b"dev-1", value=f"ping-{unique}".encode(),
                     on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(15) == 0
    assert delivered == [None]
    consumer = kafka_consumer(kafka_topics, f"smoke-{unique}")
    consumer.subscribe([topic])
    try:
        msg = None
        for _ in range(30):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None, "nothing consumed within 30 s"
        assert msg.value() == f"ping-{unique}".encode()
        assert msg.key() == b"dev-1"
    finally:
        consumer.close()


def test_mongo_insert_find(mongo: MongoClient[dict[str, Any]], settings: Settings) -> None:
    coll = mongo[settings.mongo_db]["smoke"]
    coll.insert_many([{"_id": i, "v": i * 1.5} for i in range(10)])
    assert coll.count_documents({"v": {"$gte": 6}}) == 6
    assert coll.find_one({"_id": 3}) == {"_id": 3, "v": 4.5}


def _get(url: str, auth: tuple[str, str] | None) -> int:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mongo_express_requires_auth(base_settings: Settings) -> None:
    url = f"http://127.0.0.1:{base_settings.mongo_express_port}/"
    auth = (base_settings.mongo_express_username,
            base_settings.mongo_express_password.get_secret_value())
    try:
        assert _get(url, auth) == 200
    except urllib.error.URLError as exc:
        pytest.fail(f"mongo-express not reachable at {url}: {exc}", pytrace=False)
    assert _get(url, None) == 401
    assert _get(url, (auth[0], "wrong")) == 401
