"""Codecs: MQTT payloads to canonical readings. Pure: no client library here.

`decode` checks the size first (without parsing), then parses JSON once with
orjson and hands the document to the route's codec. Every failure is a
`DecodeError` whose `reason` is one of `DECODE_REASONS` (a metric label).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from bridge.routes import Route
from contracts.errors import DecodeError
from contracts.events import Reading, Source

from ._common import MAX_DEPTH, MAX_FUTURE_NS, MIN_TS_NS, epoch_to_ns, parse_json
from .json_reading import decode_json_reading
from .seed_image import decode_seed_image
from .sensor_logger import decode_sensor_logger

DECODE_REASONS = frozenset({
    "too_large", "not_utf8", "not_json", "too_deep", "not_object", "missing_field",
    "wrong_type", "not_finite", "bad_timestamp", "ts_out_of_range", "bad_id",
    "no_route",  # raised by the runtime when no route matches a topic
})

Codec = Callable[[dict[str, str], object, Source, int], list[Reading]]
CODECS: dict[str, Codec] = {
    "json_reading": decode_json_reading,
    "sensor_logger": decode_sensor_logger,
    "seed_image": decode_seed_image,
}

__all__ = ["CODECS", "DECODE_REASONS", "MAX_DEPTH", "MAX_FUTURE_NS", "MIN_TS_NS",
           "DecodeError", "decode", "epoch_to_ns"]


def decode(route: Route, topic_fields: dict[str, str], topic: str, payload: bytes, *,
           qos: int, received_at_ns: int, max_payload_bytes: int) -> list[Reading]:
    """Readings in one MQTT message (possibly none, e.g. Sensor Logger's test push)."""
    codec = CODECS[route.codec]
    if route.codec == "sensor_logger" and not payload.strip():
        return []  # the app's connection test may send an empty body
    document = parse_json(payload, max_payload_bytes)
    return codec(topic_fields, document, _source(topic, route.codec, qos), received_at_ns)


@functools.lru_cache(maxsize=4096)
def _source(topic: str, codec: str, qos: int) -> Source:
    """Source is frozen, so one instance per topic serves all its messages;
    building a frozen dataclass costs about a microsecond per message."""
    return Source(topic, codec, qos)
