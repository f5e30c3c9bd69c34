"""Which MQTT subscriptions a bridge holds, under which client id, and which
bridge of a `BRIDGE_SPLIT_COUNT` group forwards a message. Pure functions."""

from __future__ import annotations

import socket
import zlib

from contracts.settings import Settings


def client_id_for(settings: Settings) -> str:
    return settings.bridge_client_id or (
        f"edgepipe-bridge-{socket.gethostname()}-{settings.bridge_instance}")


def split_owner(topic: str, fields: dict[str, str] | None, count: int) -> int:
    """The bridge instance (0..count-1) that forwards this message: by device
    id when the route's topic names it (one device, one bridge: its order
    holds), else by topic. crc32, not hash(): every process must agree."""
    key = (fields or {}).get("device_id") or topic
    return zlib.crc32(key.encode()) % count


def subscription_filters(route_filters: list[str], unrouted: tuple[str, ...] = ()) -> list[str]:
    """Route filters and catch-alls minus those another one already covers:
    with overlapping subscriptions the broker would send a message once per match."""
    filters = list(dict.fromkeys([*route_filters, *unrouted]))
    return [f for f in filters if not any(g != f and _covers(g, f) for g in filters)]


def _covers(wide: str, narrow: str) -> bool:
    wide_levels, narrow_levels = wide.split("/"), narrow.split("/")
    for i, level in enumerate(wide_levels):
        if level == "#":
            return True
        if i >= len(narrow_levels) or narrow_levels[i] == "#":
            return False
        if level not in ("+", narrow_levels[i]):
            return False
    return len(wide_levels) == len(narrow_levels)
