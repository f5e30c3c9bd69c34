"""The hostile corpus (tests/data/hostile/manifest.yaml) fed to a running
bridge over MQTT and a running API over HTTP, with good readings interleaved:
every case is answered (HTTP status with a reason) or dead-lettered with its
reason in both Kafka readings.dlq and iot.dead_letters; neither process
exits or restarts and /health answers 200 throughout; every good reading is
stored exactly once."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pymongo import MongoClient

from contracts.clients import kafka_consumer, mqtt_client, mqtt_connect
from contracts.dead_letters import DeadLetter
from contracts.events import ns_to_iso
from contracts.settings import Settings
from tests.support import REPO, ServiceProcess, free_port, service_env, wait_for

CORPUS = REPO / "tests" / "data" / "hostile"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@dataclass
class Case:
    index: int
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.index}:{self.spec['channel']}:{self.spec['file']}"

    @property
    def device(self) -> str:
        default = "hostile-" + Path(self.spec["file"]).stem.replace("_", "-") + f"-{self.index}"
        return str(self.spec.get("device", default))

    def body(self) -> bytes:
        data = (CORPUS / self.spec["file"]).read_bytes()
        return data.ljust(int(self.spec.get("pad_to_bytes", 0)), b" ")


def load_cases() -> list[Case]:
    manifest = yaml.safe_load((CORPUS / "manifest.yaml").read_text())
    return [Case(i, spec) for i, spec in enumerate(manifest["cases"])]


class HealthWatch:
    """Polls /health of each process while the corpus runs; keeps failures."""

    def __init__(self, procs: list[ServiceProcess]) -> None:
        self.procs = procs
        self.failures: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(0.5):
                return

    def poll(self) -> None:
        for proc in self.procs:
            status = proc.get("/health")[0]
            self.polls += 1
            if status != 200:
                self.failures.append(f"{proc.module} /health {status}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.poll()  # the corpus can take less than one polling interval


@pytest.fixture
def bridge_and_api(services: Settings, unique: str,
                   tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess, str]]:
    token = f"corpus-{unique}"
    env = service_env(services, unique, BRIDGE_CLIENT_ID=f"bridge-{unique}",
                      BRIDGE_HTTP_PORT=str(free_port()), BRIDGE_SINK_BATCH_WAIT_MS="50",
                      API_PORT=str(free_port()), API_INGEST_TOKEN=token)
    bridge = ServiceProcess("bridge", env, tmp_path / "bridge.log",
                            http_port=int(env["BRIDGE_HTTP_PORT"])).start()
    api = ServiceProcess("api", env, tmp_path / "api.log", http_port=int(env["API_PORT"])).start()
    try:
        bridge.wait_ready(90)
        api.wait_ready(60, path="/health")
        yield bridge, api, token
    finally:
        bridge.kill()
        api.kill()


def http(api: ServiceProcess, case: Case, token: str) -> tuple[int, Any]:
    spec = case.spec
    url = f"http://127.0.0.1:{api.http_port}{spec['path']}"
    headers = {"content-type": "application/json"}
    auth = spec.get("auth", "token")
    if auth != "none":
        headers["authorization"] = f"Bearer {token if auth == 'token' else 'wrong-' + token}"
    if spec["method"] == "GET":
        request = urllib.request.Request(f"{url}?{case.body().decode().strip()}", headers=headers)
    else:
        request = urllib.request.Request(url, data=case.body(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, orjson.loads(raw or b"null")
        except orjson.JSONDecodeError:
            return exc.code, raw.decode(errors="replace")


def dlq_letters(settings: Settings, unique: str, wanted: int, timeout: float) -> list[DeadLetter]:
    consumer = kafka_consumer(settings, f"corpus-check-{unique}")
    consumer.subscribe([settings.kafka_topic_dlq])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    try:
        while len(letters) < wanted and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                letters.append(DeadLetter.from_json(msg.value() or b""))
    finally:
        consumer.close()
    return letters


def test_hostile_corpus(bridge_and_api: tuple[ServiceProcess, ServiceProcess, str],
                        services: Settings, unique: str,
                        mongo: MongoClient[dict[str, Any]]) -> None:
    bridge, api, token = bridge_and_api
    pids = {p.module: p.proc.pid for p in (bridge, api) if p.proc is not None}
    watch = HealthWatch([bridge, api])
    cases = load_cases()
    root = f"t/{unique}/"
    good_device = f"good-{unique}"
    client = mqtt_client(services, f"corpus-{unique}")
    mqtt_connect(client, services)
    client.loop_start()
    good = 0
    sent: dict[int, tuple[str, bytes]] = {}  # case index -> (topic or path, bytes)
    answers: dict[int, tuple[int, Any]] = {}

    def publish(topic: str, payload: bytes) -> None:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(15)
        assert info.is_published(), f"no PUBACK for {topic}"

    def publish_good() -> None:
        nonlocal good
        body = {"ts": ns_to_iso(time.time_ns() - 60_000_000_000 + good * 1_000_000),
                "value": 20.0 + good, "seq": good}
        publish(f"{root}sensors/{good_device}/temperature", json.dumps(body).encode())
        good += 1

    try:
        for case in cases:
            publish_good()
            spec = case.spec
            if spec["channel"] == "mqtt":
                topic = root + spec["topic"].format(device=case.device)
                for _ in range(int(spec.get("repeat", 1))):
                    publish(topic, case.body())
                sent[case.index] = (topic, case.body())
            else:
                answers[case.index] = http(api, case, token)
                sent[case.index] = (spec["path"], case.body())
        publish_good()
    finally:
        client.disconnect()
        client.loop_stop()

    failures: list[str] = []
    for index, (status, body) in answers.items():
        expect = cases[index].spec["expect"]
        if status != expect["status"]:
            failures.append(f"{cases[index].name}: HTTP {status}, expected {expect['status']}: "
                            f"{str(body)[:200]}")
        elif status >= 400 and not body:
            failures.append(f"{cases[index].name}: HTTP {status} without a reason")
        elif "reason" in expect and (not isinstance(body, dict)
                                     or body.get("reason") != expect["reason"]):
            failures.append(f"{cases[index].name}: reason {body!r}, expected {expect['reason']}")
        elif "items" in expect and len(body["items"]) != expect["items"]:
            failures.append(f"{cases[index].name}: {len(body['items'])} items, "
                            f"expected {expect['items']}")

    db = mongo[services.mongo_db]
    dead = [c for c in cases if "dead_letter" in c.spec["expect"]]
    wait_for(lambda: db.dead_letters.count_documents({}) >= len(dead), 60,
             f"{len(dead)} dead letters in iot.dead_letters (bridge: {bridge.log_tail(800)})")
    stored = [DeadLetter.from_dict(d) for d in db.dead_letters.find({})]
    kafka = dlq_letters(services, unique, len(dead), 30)
    for case in dead:
        topic, payload = sent[case.index]
        reason = case.spec["expect"]["dead_letter"]
        for where, letters in (("iot.dead_letters", stored), ("readings.dlq", kafka)):
            found = [x for x in letters if x.payload == payload and x.topic.endswith(topic)]
            if [x.reason for x in found] != [reason]:
                failures.append(f"{case.name}: {where} has {[x.reason for x in found]}, "
                                f"expected [{reason!r}]")

    wait_for(lambda: db.readings.count_documents({"device_id": good_device}) >= good, 60,
             f"all {good} good readings stored")
    for case in cases:
        if "readings" in case.spec["expect"]:
            count = db.readings.count_documents({"device_id": case.device})
            if count != case.spec["expect"]["readings"]:
                failures.append(f"{case.name}: {count} readings stored, "
                                f"expected {case.spec['expect']['readings']}")
    good_seqs = [d["seq"] for d in db.readings.find({"device_id": good_device}, {"seq": 1})]
    assert sorted(good_seqs) == list(range(good)), "good readings lost or doubled"

    watch.stop()
    assert watch.polls > 0
    assert not watch.failures, watch.failures[:10]
    for proc in (bridge, api):
        assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
        assert proc.proc.pid == pids[proc.module]
    assert not failures, "\n".join(failures)
    print(f"hostile corpus: {len(cases)} cases ({len(dead)} dead-lettered, {len(answers)} HTTP), "
          f"{good} good readings interleaved, all stored once")
