"""Routes: which MQTT topics the bridge takes, how it decodes them and where
they go in Kafka.

A route's topic is an MQTT filter whose single-level wildcards may be named,
`sensors/{device_id}/{sensor}`: the named levels reach the codec as fields.
`+` is an unnamed single level, `#` (last level only) any number of levels.
The routes file is checked whole at start; every mistake names the file and
line, so a bad deployment fails before it subscribes to anything.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from contracts.errors import ConfigError
from contracts.events import Reading
from contracts.settings import Settings

SHIPPED_ROUTES = Path(__file__).with_name("routes.yaml")

# The codec names a route may use, and the topic fields each codec needs.
CODEC_TOPIC_FIELDS: dict[str, frozenset[str]] = {
    "json_reading": frozenset({"device_id", "sensor"}),
    "sensor_logger": frozenset(),
    "seed_image": frozenset(),
}
KEY_FIELDS = frozenset({"device_id", "sensor", "event_id"})
DEFAULT_KEY = "{device_id}"

_REQUIRED_KEYS = frozenset({"name", "topic", "codec"})
_OPTIONAL_KEYS = frozenset({"kafka_topic", "key"})


@dataclass(frozen=True, slots=True)
class _Level:
    """One level of a topic template: a literal, `+`, `#`, or a named `+`."""

    text: str
    name: str | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.name is not None or self.text in ("+", "#")


def parse_template(template: str) -> tuple[_Level, ...]:
    """The levels of a topic template; ValueError says what is wrong with it."""
    if not template:
        raise ValueError("topic is empty")
    levels = template.split("/")
    parsed: list[_Level] = []
    seen: set[str] = set()
    for index, level in enumerate(levels):
        if level == "#":
            if index != len(levels) - 1:
                raise ValueError("'#' is allowed only as the last level")
            parsed.append(_Level("#"))
        elif level.startswith("{") and level.endswith("}"):
            name = level[1:-1]
            if not name.isidentifier():
                raise ValueError(f"level {level!r}: a named level must be {{identifier}}")
            if name in seen:
                raise ValueError(f"level name {name!r} appears twice")
            seen.add(name)
            parsed.append(_Level("+", name))
        elif level == "+":
            parsed.append(_Level("+"))
        elif any(char in level for char in "+#{}\x00"):
            raise ValueError(f"level {level!r} mixes a wildcard or brace with text")
        else:
            parsed.append(_Level(level))
    return tuple(parsed)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    topic: str
    codec: str
    kafka_topic: str
    key: str = DEFAULT_KEY
    _levels: tuple[_Level, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_levels", parse_template(self.topic))

    @property
    def mqtt_filter(self) -> str:
        """The filter to subscribe with: named levels become `+`."""
        return "/".join(level.text for level in self._levels)

    @property
    def field_names(self) -> frozenset[str]:
        return frozenset(level.name for level in self._levels if level.name)

    def match(self, topic: str) -> dict[str, str] | None:
        """Named levels of a concrete topic, or None if the filter does not match it."""
        levels = self._levels
        parts = topic.split("/")
        if levels[-1].text == "#":
            levels = levels[:-1]
            if len(parts) < len(levels):
                return None
        elif len(parts) != len(levels):
            return None
        # MQTT: wildcards at the first level never match topics starting with `$`.
        if topic.startswith("$") and self._levels[0].is_wildcard:
            return None
        fields: dict[str, str] = {}
        for level, part in zip(levels, parts, strict=False):
            if level.name is not None:
                fields[level.name] = part
            elif level.text != "+" and level.text != part:
                return None
        return fields


def match_route(routes: Sequence[Route], topic: str) -> tuple[Route, dict[str, str]] | None:
    """The first route whose filter matches the topic, with its named levels."""
    for route in routes:
        fields = route.match(topic)
        if fields is not None:
            return route, fields
    return None


def key_for(route: Route, reading: Reading) -> bytes:
    """The Kafka key of a reading: the route's key template over its fields."""
    if route.key == DEFAULT_KEY:
        return reading.device_id.encode()
    return route.key.format(
        device_id=reading.device_id, sensor=reading.sensor, event_id=reading.event_id
    ).encode()


def _check_key_template(key: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(key) if name is not None}
    except ValueError as exc:
        raise ValueError(f"key {key!r} is not a valid template: {exc}") from exc
    unknown = names - KEY_FIELDS
    if unknown or not names:
        raise ValueError(
            f"key {key!r} must use only the fields {sorted(KEY_FIELDS)}, got {sorted(names)}"
        )


class _RoutesFile:
    """Reads one routes file, turning every mistake into a ConfigError with a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, node: yaml.Node | None, message: str) -> ConfigError:
        line = "" if node is None else f":{node.start_mark.line + 1}"
        return ConfigError(f"routes file {self.path}{line}: {message}")

    def compose(self) -> yaml.Node:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"routes file {self.path} cannot be read: {exc}") from exc
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = "" if mark is None else f":{mark.line + 1}"
            raise ConfigError(f"routes file {self.path}{where}: invalid YAML: {exc}") from exc
        if root is None:
            raise ConfigError(f"routes file {self.path}: empty, expected a 'routes:' list")
        return root

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A YAML mapping of string keys to (key node, value node); duplicates refused."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, f"{what} has a key that is not a string")
            if key_node.value in entries:
                raise self.fail(key_node, f"{what} has the key {key_node.value!r} twice")
            entries[key_node.value] = (key_node, value_node)
        return entries

    def text(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or not node.value:
            raise self.fail(node, f"{what} must be a non-empty string (quote templates "
                                  "that start with '{')")
        return str(node.value)

    def routes(self, settings: Settings, topic_prefix: str) -> list[Route]:
        root = self.compose()
        top = self.mapping(root, "the file")
        unknown = set(top) - {"routes"}
        if unknown:
            raise self.fail(top[min(unknown)][0], f"unknown top-level key {min(unknown)!r}; "
                                                  "expected only 'routes'")
        if "routes" not in top:
            raise self.fail(root, "missing the 'routes:' list")
        entries = top["routes"][1]
        if not isinstance(entries, yaml.SequenceNode) or not entries.value:
            raise self.fail(entries, "'routes' must be a non-empty list")
        routes: list[Route] = []
        name_lines: dict[str, int] = {}
        filters: dict[str, str] = {}
        for entry in entries.value:
            route = self.route(entry, settings, topic_prefix)
            line = entry.start_mark.line + 1
            if route.name in name_lines:
                raise self.fail(entry, f"route name {route.name!r} is already used on line "
                                       f"{name_lines[route.name]}")
            if route.mqtt_filter in filters:
                raise self.fail(entry, f"route {route.name!r} can never match: route "
                                       f"{filters[route.mqtt_filter]!r} has the same topic filter")
            name_lines[route.name] = line
            filters[route.mqtt_filter] = route.name
            routes.append(route)
        return routes

    def route(self, node: yaml.Node, settings: Settings, topic_prefix: str) -> Route:
        entry = self.mapping(node, "a route")
        unknown = set(entry) - _REQUIRED_KEYS - _OPTIONAL_KEYS
        if unknown:
            key = min(unknown)
            raise self.fail(entry[key][0], f"unknown key {key!r} in a route; allowed: "
                                           f"{sorted(_REQUIRED_KEYS | _OPTIONAL_KEYS)}")
        missing = _REQUIRED_KEYS - set(entry)
        if missing:
            raise self.fail(node, f"route is missing {sorted(missing)}")
        values = {key: self.text(value, key) for key, (_, value) in entry.items()}
        name, codec = values["name"], values["codec"]
        if codec not in CODEC_TOPIC_FIELDS:
            raise self.fail(entry["codec"][1], f"route {name!r}: unknown codec {codec!r}; "
                                               f"known: {sorted(CODEC_TOPIC_FIELDS)}")
        key = values.get("key", DEFAULT_KEY)
        try:
            _check_key_template(key)
        except ValueError as exc:
            raise self.fail(entry["key"][1], f"route {name!r}: {exc}") from exc
        try:
            route = Route(
                name=name,
                topic=topic_prefix + values["topic"],
                codec=codec,
                kafka_topic=values.get("kafka_topic", settings.kafka_topic_readings),
                key=key,
            )
        except ValueError as exc:
            raise self.fail(entry["topic"][1], f"route {name!r}: bad topic template: {exc}") \
                from exc
        missing_fields = CODEC_TOPIC_FIELDS[codec] - route.field_names
        if missing_fields:
            raise self.fail(entry["topic"][1], f"route {name!r}: bad topic template: codec "
                                               f"{codec!r} needs the named levels "
                                               f"{sorted(missing_fields)}")
        return route


def load_routes(settings: Settings, path: Path | None = None, *,
                topic_prefix: str = "") -> list[Route]:
    """The routes from `path`, else settings.bridge_routes_path, else the shipped file.

    `topic_prefix` (e.g. "t/abc/") is put in front of every topic, so tests and
    shared brokers can run the same routes under their own root.
    """
    chosen = path or settings.bridge_routes_path or SHIPPED_ROUTES
    if topic_prefix and (not topic_prefix.endswith("/") or any(c in topic_prefix for c in "+#")):
        raise ConfigError(f"topic prefix {topic_prefix!r} must end with '/' and hold no wildcard")
    return _RoutesFile(Path(chosen)).routes(settings, topic_prefix)
