"""Checks shared by the codecs: parsing, ids, numbers and timestamps, each
failing with a DecodeError whose reason is a stable metric label."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from contracts.errors import DecodeError, SchemaError
from contracts.events import NS_PER_S, check_id, check_number, datetime_to_ns

MAX_DEPTH = 32
# Readings stamped before this or more than MAX_FUTURE_NS after their arrival are
# clock faults or unit mix-ups (ms read as ns lands in 1970), not data.
MIN_TS_NS = datetime_to_ns(datetime(2000, 1, 1, tzinfo=UTC))
MAX_FUTURE_NS = 86_400 * NS_PER_S
# BSON stores integers as signed 64-bit; orjson parses unsigned 64-bit.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_UNIT_LENGTH = 32

_BOM = b"\xef\xbb\xbf"
_CONSTANT = re.compile(rb"NaN|Infinity")
_LONG_FRACTION = re.compile(r"[.,]\d{6}(\d{1,3})")


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(name)


def _classify_json_error(payload: bytes, exc: orjson.JSONDecodeError) -> DecodeError:
    text = str(exc)
    if "depth limit" in text:
        return DecodeError("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels")
    if "infinity" in text:
        return DecodeError("not_finite", f"a number overflows to infinity: {text}")
    try:
        decoded = payload.decode("utf-8")
    except UnicodeDecodeError as utf_exc:
        return DecodeError("not_utf8", f"payload is not valid UTF-8: {utf_exc}")
    if _CONSTANT.search(payload):
        # orjson rejects NaN and Infinity literals like any other bad token;
        # the stdlib parser tells whether they were the only problem.
        try:
            json.loads(decoded, parse_constant=_refuse_constant)
        except _NotFinite as constant:
            return DecodeError("not_finite", f"payload holds the non-finite number {constant}")
        except (ValueError, RecursionError):
            pass
    return DecodeError("not_json", f"payload is not JSON: {text}")


def _too_deep(document: object) -> bool:
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:  # type: ignore[attr-defined]
            if isinstance(child, dict | list):
                if depth + 1 > MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(payload: bytes, max_payload_bytes: int) -> object:
    """The JSON document in a payload, size and depth checked."""
    if len(payload) > max_payload_bytes:
        raise DecodeError("too_large",
                          f"payload is {len(payload)} bytes, the limit is {max_payload_bytes}")
    if payload.startswith(_BOM):
        payload = payload[len(_BOM):]
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _classify_json_error(payload, exc) from exc
    # Depth cannot exceed the count of openers; only many-bracket payloads get walked.
    if (isinstance(document, dict | list)
            and payload.count(b"{") + payload.count(b"[") > MAX_DEPTH
            and _too_deep(document)):
        raise DecodeError("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels")
    return document


def require_object(document: object, what: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise DecodeError("not_object", f"{what} must be a JSON object, got "
                                        f"{_json_type(document)}")
    return document


def require(document: dict[str, Any], name: str, what: str) -> Any:
    value = document.get(name)
    if value is None:
        raise DecodeError("missing_field", f"{what} has no {name!r}")
    return value


def ident(kind: str, value: object) -> str:
    """A device id or sensor name (they become MQTT topic levels and filter values)."""
    if not isinstance(value, str):
        raise DecodeError("wrong_type", f"{kind} must be a string, got {_json_type(value)}")
    try:
        check_id(kind, value)
    except SchemaError as exc:
        raise DecodeError("bad_id", str(exc)) from exc
    return value


def field_name(kind: str, value: str) -> str:
    """A name that becomes a MongoDB key inside `values`: an id without `.`,
    which MongoDB would read as a path."""
    ident(kind, value)
    if "." in value:
        raise DecodeError("bad_id", f"{kind} {value!r} contains '.'")
    return value


def number(kind: str, value: object) -> float:
    try:
        return check_number(kind, value)
    except SchemaError as exc:
        reason = "not_finite" if isinstance(value, float) else "wrong_type"
        raise DecodeError(reason, str(exc)) from exc


def number_map(kind: str, values: dict[str, Any]) -> dict[str, float]:
    """Axis name -> finite float, every key a valid field name."""
    return {field_name(f"{kind} field", name): number(f"{kind}.{name}", value)
            for name, value in values.items()}


def optional_int(kind: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError("wrong_type", f"{kind} must be an integer, got {_json_type(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise DecodeError("wrong_type", f"{kind} {value} does not fit in 64 bits")
    return value


def optional_unit(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_UNIT_LENGTH:
        raise DecodeError("wrong_type", f"unit must be a string of at most {MAX_UNIT_LENGTH} "
                                        f"characters, got {_json_type(value)}")
    return value


def epoch_to_ns(value: int | float) -> int:
    """Epoch seconds, milliseconds, microseconds or nanoseconds, told apart by
    magnitude: below 1e11 seconds, below 1e14 ms, below 1e17 µs, else ns.
    (Each bound is the year 5138 in the smaller unit and 1973 in the larger.)"""
    magnitude = abs(value)
    if magnitude < 1e11:
        scale = NS_PER_S
    elif magnitude < 1e14:
        scale = 1_000_000
    elif magnitude < 1e17:
        scale = 1_000
    else:
        scale = 1
    if isinstance(value, int):
        return value * scale
    # Split off the integer part (exact in a float) so only the fraction is rounded.
    whole = int(value)
    return whole * scale + round((value - whole) * scale)


def iso_to_ns(text: str) -> int:
    """ISO-8601 to epoch ns; no offset means UTC; digits past µs are kept."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DecodeError("bad_timestamp", f"timestamp {text[:64]!r} is not ISO-8601 or an "
                                           "epoch number") from exc
    ts_ns = datetime_to_ns(moment)
    extra = _LONG_FRACTION.search(text)
    if extra:
        ts_ns += int(extra.group(1).ljust(3, "0"))
    return ts_ns


def timestamp_to_ns(value: object) -> int:
    """A JSON timestamp: ISO-8601 text, an epoch number, or an epoch number as text."""
    if isinstance(value, str):
        if value.isascii() and value.isdigit():
            return epoch_to_ns(int(value))
        return iso_to_ns(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("wrong_type", f"ts must be ISO-8601 text or an epoch number, got "
                                        f"{_json_type(value)}")
    return epoch_to_ns(value)


def check_ts(ts_ns: int, received_at_ns: int) -> int:
    if ts_ns < MIN_TS_NS or ts_ns > received_at_ns + MAX_FUTURE_NS:
        raise DecodeError("ts_out_of_range", f"timestamp {ts_ns} ns is before 2000-01-01 or "
                                             "more than a day after the message arrived")
    return ts_ns


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__
