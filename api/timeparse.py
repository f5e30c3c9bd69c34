"""Times at the API boundary: ISO-8601 (naive means UTC), the seed's
`YYYY-MM-DD hh:mm:ss`, or epoch seconds/milliseconds/microseconds/nanoseconds
told apart by magnitude. Everything becomes UTC epoch nanoseconds (an int)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from contracts.errors import SchemaError
from contracts.events import NS_PER_S, datetime_to_ns

# Magnitude bands (as seconds, ms, µs, ns since 1970) cover years 1973..5138.
_EPOCH_UNITS = ((10**11, NS_PER_S), (10**14, 10**6), (10**17, 10**3))
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def epoch_to_ns(number: Decimal) -> int:
    magnitude = abs(number)
    for bound, scale in _EPOCH_UNITS:
        if magnitude < bound:
            return int(number * scale)
    return int(number)


def parse_time(kind: str, value: object) -> int:
    """UTC epoch nanoseconds from any accepted form; SchemaError says what was wrong."""
    if isinstance(value, bool) or value is None:
        raise SchemaError(f"'{kind}' must be a time, got {value!r}")
    if isinstance(value, int):
        return epoch_to_ns(Decimal(value))
    if isinstance(value, float):
        return epoch_to_ns(Decimal(repr(value)))
    if not isinstance(value, str):
        raise SchemaError(f"'{kind}' must be a time string or epoch number, "
                          f"got {type(value).__name__}")
    text = value.strip()
    if _NUMBER.match(text):
        try:
            return epoch_to_ns(Decimal(text))
        except InvalidOperation as exc:
            raise SchemaError(f"'{kind}' is not a number: {value!r}") from exc
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise SchemaError(
            f"'{kind}' is not a time: {value!r}; use 'YYYY-MM-DD hh:mm:ss' (UTC), "
            "ISO-8601 or epoch seconds/milliseconds/nanoseconds") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return datetime_to_ns(moment)


def parse_range(start: object, end: object, *, max_days: int,
                names: tuple[str, str] = ("from", "to")) -> tuple[int, int]:
    """A half-open range [start, end); `end` before `start` or too long is an error."""
    start_ns, end_ns = parse_time(names[0], start), parse_time(names[1], end)
    if end_ns < start_ns:
        raise SchemaError(f"'{names[0]}' ({start}) must not be after '{names[1]}' ({end})")
    if end_ns - start_ns > max_days * 86_400 * NS_PER_S:
        raise SchemaError(f"the range from '{names[0]}' to '{names[1]}' is longer than "
                          f"{max_days} days")
    return start_ns, end_ns
