"""Samples to MQTT messages, in the three formats the bridge accepts
(DESIGN.md "Contracts"). Pure: each encoder returns (topic, payload) pairs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson

from contracts.errors import ConfigError
from contracts.events import NS_PER_S, ns_to_iso
from edge_simulator.samples import Sample

Format = Literal["sensors", "sensor-logger", "image"]
FORMATS: tuple[Format, ...] = ("sensors", "sensor-logger", "image")
Message = tuple[str, bytes]

# The Android sensor status the app reports with motion sensors: 3 = high accuracy.
SENSOR_LOGGER_ACCURACY = {"gyroscope": 3}


class Encoder(Protocol):
    def encode(self, samples: list[Sample]) -> list[Message]:
        """Called once per tick, with the samples of that tick (maybe none)."""

    def flush(self) -> list[Message]:
        """What is still held back (a partial batch), at the end of a run."""


class SensorsEncoder:
    """`sensors/{device_id}/{sensor}`: one reading per message."""

    def __init__(self, topic_prefix: str, device_id: str) -> None:
        self._topic = f"{topic_prefix}sensors/{device_id}/"
        self._seq: dict[str, int] = {}

    def encode(self, samples: list[Sample]) -> list[Message]:
        messages = []
        for sample in samples:
            seq = self._seq.get(sample.sensor, 0)
            self._seq[sample.sensor] = seq + 1
            body: dict[str, Any] = {"ts": ns_to_iso(sample.ts_ns), "seq": seq}
            if sample.values is not None:
                body["values"] = sample.values
            else:
                body["value"] = sample.value
            if sample.unit:
                body["unit"] = sample.unit
            messages.append((self._topic + sample.sensor, orjson.dumps(body)))
        return messages

    def flush(self) -> list[Message]:
        return []


class SensorLoggerEncoder:
    """`sensor-logger`: what the Sensor Logger app sends each batch period, all
    sensors sampled during that period in one message, times in epoch ns."""

    def __init__(self, topic_prefix: str, device_id: str, session_id: str,
                 ticks_per_message: int) -> None:
        self._topic = f"{topic_prefix}sensor-logger"
        self._device_id = device_id
        self._session_id = session_id
        self._ticks_per_message = ticks_per_message
        self._ticks = 0
        self._message_id = 0
        self._entries: list[dict[str, Any]] = []

    def encode(self, samples: list[Sample]) -> list[Message]:
        for sample in samples:
            entry: dict[str, Any] = {
                "name": sample.sensor,
                "time": sample.ts_ns,
                "values": sample.values if sample.values is not None else {"value": sample.value},
            }
            accuracy = SENSOR_LOGGER_ACCURACY.get(sample.sensor)
            if accuracy is not None:
                entry["accuracy"] = accuracy
            self._entries.append(entry)
        self._ticks += 1
        if self._ticks < self._ticks_per_message:
            return []
        return self.flush()

    def flush(self) -> list[Message]:
        self._ticks = 0
        if not self._entries:
            return []
        body = {"messageId": self._message_id, "sessionId": self._session_id,
                "deviceId": self._device_id, "payload": self._entries}
        self._message_id += 1
        self._entries = []
        return [(self._topic, orjson.dumps(body))]


class ImageEncoder:
    """`Image`: the seed pipeline's format. It has room for one number, so a
    tick sends its first scalar sample."""

    def __init__(self, topic_prefix: str, device_id: str) -> None:
        self._topic = f"{topic_prefix}Image"
        self._device_id = device_id

    def encode(self, samples: list[Sample]) -> list[Message]:
        for sample in samples:
            if sample.value is None:
                continue
            value = sample.value
            text = str(int(value)) if value.is_integer() else str(value)
            collected = datetime.fromtimestamp(sample.ts_ns // NS_PER_S, tz=UTC)
            body = {"sensorId": self._device_id, "image": text,
                    "collectedAt": collected.strftime("%Y-%m-%d %H:%M:%S")}
            return [(self._topic, orjson.dumps(body))]
        return []

    def flush(self) -> list[Message]:
        return []


def make_encoder(fmt: str, topic_prefix: str, device_id: str, *, session_id: str,
                 ticks_per_message: int) -> Encoder:
    if fmt == "sensors":
        return SensorsEncoder(topic_prefix, device_id)
    if fmt == "sensor-logger":
        return SensorLoggerEncoder(topic_prefix, device_id, session_id, ticks_per_message)
    if fmt == "image":
        return ImageEncoder(topic_prefix, device_id)
    raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
