"""Sensor Logger HTTP push to Kafka `readings`, with the bridge's codec, so an
HTTP batch becomes exactly the readings the same batch over MQTT would.

The answer waits for Kafka's acknowledgement (acks=all): a 200 means the
readings are durable; the app retries anything else. Rejected bodies go to
`readings.dlq` as dead letters (the raw sink stores them in MongoDB).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.codecs import decode
from bridge.routes import Route, key_for, load_routes
from contracts.dead_letters import DeadLetter
from contracts.errors import ConfigError, DecodeError, ServiceUnavailable
from contracts.events import Reading
from contracts.settings import Settings

HTTP_TOPIC = "http:/ingest/sensor-logger"


def sensor_logger_route(settings: Settings) -> Route:
    for route in load_routes(settings):
        if route.codec == "sensor_logger":
            return route
    raise ConfigError("no route uses the sensor_logger codec; the ingest endpoint needs one")


class IngestPipe:
    """Owns the producer's delivery loop: a thread serves librdkafka callbacks
    and hands each outcome back to the event loop that is awaiting it."""

    def __init__(self, settings: Settings, producer: Producer) -> None:
        self.settings = settings
        self.producer = producer
        self.route = sensor_logger_route(settings)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve_callbacks, name="ingest-kafka",
                                        daemon=True)

    def start(self) -> None:
        self._poller.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._poller.join(timeout_s)
        self.producer.flush(timeout_s)

    def _serve_callbacks(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def decode(self, body: bytes, received_at_ns: int) -> list[Reading]:
        return decode(self.route, {}, HTTP_TOPIC, body, qos=0, received_at_ns=received_at_ns,
                      max_payload_bytes=self.settings.bridge_max_payload_bytes)

    async def _produce(self, records: list[tuple[str, bytes, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for topic, key, value in records:
            future: asyncio.Future[None] = loop.create_future()

            def done(err: KafkaError | None, msg: Message,
                     future: asyncio.Future[None] = future) -> None:
                loop.call_soon_threadsafe(_settle, future, err)

            try:
                self.producer.produce(topic, value, key, on_delivery=done,
                                      headers=[("http_path", HTTP_TOPIC.encode())])
            except (BufferError, KafkaException) as exc:
                for pending in futures:
                    pending.cancel()
                raise ServiceUnavailable(f"Kafka producer refused the batch: {exc}") from exc
            futures.append(future)
        try:
            await asyncio.wait_for(asyncio.gather(*futures),
                                   self.settings.api_ingest_timeout_s)
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"Kafka did not acknowledge within {self.settings.api_ingest_timeout_s} s") \
                from exc

    async def send(self, readings: list[Reading]) -> None:
        topic = self.route.kafka_topic
        await self._produce([(topic, key_for(self.route, r), r.to_json()) for r in readings])

    async def dead_letter(self, error: DecodeError, body: bytes, received_at_ns: int) -> None:
        letter = DeadLetter(reason=error.reason, message=str(error), topic=HTTP_TOPIC,
                            route=self.route.name, codec=self.route.codec, payload=body,
                            received_at_ns=received_at_ns)
        await self._produce([(self.settings.kafka_topic_dlq, HTTP_TOPIC.encode(),
                              letter.to_json())])


def _settle(future: asyncio.Future[None], err: Any) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(ServiceUnavailable(f"Kafka delivery failed: {err}"))


def now_ns() -> int:
    return time.time_ns()
