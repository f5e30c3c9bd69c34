"""The bridge bench's baseline: the seed pipeline's way of moving readings,
per MQTT message one Kafka produce + flush() and one MongoDB insert_one, in
its own process. Kept exactly as the seed did it; only the load generator
and the CPU accounting around it are shared with the forwarder's rounds."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

from bench.mqtt_load import LeanPublishers, mosquitto_pub
from bench.proc_cpu import CpuSplit, reap_cpu_s
from contracts.clients import kafka_producer, mongo_client, mqtt_client, mqtt_connect
from contracts.settings import Settings

MESSAGES = 50_000  # far more than the naive way moves in the measured seconds


def naive_subscriber(settings: Settings, root: str, db: str, topic: str, seconds: float,
                     result: Any) -> None:
    """The seed pipeline's way: per message one produce + flush and one insert_one."""
    producer = kafka_producer(settings)
    collection = mongo_client(settings)[db]["readings"]
    done = threading.Event()
    count = [0]
    started: list[float] = []

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if not started:
            started.append(time.monotonic())
            started.append(time.process_time())
        producer.produce(topic, msg.payload)
        producer.flush()
        collection.insert_one(json.loads(msg.payload))
        count[0] += 1

    client = mqtt_client(settings)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(f"{root}#", qos=1)
    mqtt_connect(client, settings)
    client.loop_start()
    done.wait(seconds + 2)
    client.loop_stop()
    elapsed = time.monotonic() - started[0] if started else seconds
    cpu = time.process_time() - started[1] if started else 0.0
    result.put({"messages": count[0], "seconds": round(elapsed, 2),
                "messages_per_s": round(count[0] / elapsed), "cpu_s": cpu})


def naive(settings: Settings, root: str, db: str, kafka_topic: str, seconds: float,
          services: dict[str, list[int]], tmp: Path, load: str) -> dict[str, Any]:
    """Messages/s of the naive way over `seconds`, with the CPU split."""
    queue: Any = multiprocessing.Queue()
    proc = multiprocessing.Process(target=naive_subscriber, args=(
        settings, root, db, kafka_topic, seconds, queue))
    proc.start()
    topics = [f"{root}sensors/dev0/temp"]
    lean = LeanPublishers(settings, topics, MESSAGES) if load == "lean" else None
    time.sleep(2)  # subscribed
    meter = CpuSplit(services)
    if lean is not None:
        lean.go()
    else:
        c_clients = mosquitto_pub(settings, topics, MESSAGES, tmp)
    result = dict(queue.get(timeout=seconds + 60))
    proc.join(10)
    if lean is not None:
        publishers_cpu = lean.results()["cpu_s"]
    else:
        for pub in c_clients:
            pub.kill()
        publishers_cpu = sum(reap_cpu_s(pub) for pub in c_clients)
    result["cpu_s"] = meter.finish({"naive": result.pop("cpu_s"),
                                    "publishers": publishers_cpu})
    return result
