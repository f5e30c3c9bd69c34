"""Routes: topic templates, matching, keys, and a line number on every bad file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.routes import SHIPPED_ROUTES, Route, key_for, load_routes, match_route
from contracts.errors import ConfigError
from contracts.events import Reading
from contracts.settings import Settings


def route(topic: str, codec: str = "sensor_logger", key: str = "{device_id}") -> Route:
    return Route(name="r", topic=topic, codec=codec, kafka_topic="readings", key=key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_shipped_routes_cover_the_three_formats(settings: Settings) -> None:
    routes = load_routes(settings)
    assert [(r.name, r.mqtt_filter, r.codec) for r in routes] == [
        ("sensors", "sensors/+/+", "json_reading"),
        ("sensor-logger", "sensor-logger", "sensor_logger"),
        ("seed-image", "Image", "seed_image"),
    ]
    # No kafka_topic in the file: the settings' (per-test) readings topic.
    assert {r.kafka_topic for r in routes} == {settings.kafka_topic_readings}
    assert load_routes(settings, SHIPPED_ROUTES) == routes


def test_settings_path_is_used_when_no_path_given(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, """
        routes:
          - {name: only, topic: "a/{device_id}/{sensor}", codec: json_reading, kafka_topic: other}
    """)
    routes = load_routes(settings.model_copy(update={"bridge_routes_path": path}))
    assert [(r.name, r.kafka_topic) for r in routes] == [("only", "other")]


def test_named_levels_are_captured() -> None:
    r = route("sensors/{device_id}/{sensor}", "json_reading")
    assert r.mqtt_filter == "sensors/+/+"
    assert r.match("sensors/dev-1/temp") == {"device_id": "dev-1", "sensor": "temp"}
    assert r.match("sensors/dev-1") is None
    assert r.match("sensors/dev-1/temp/extra") is None
    assert r.match("other/dev-1/temp") is None


def test_plus_and_hash_follow_mqtt_rules() -> None:
    r = route("site/+/{device_id}/#")
    assert r.mqtt_filter == "site/+/+/#"
    assert r.match("site/a/dev/x/y") == {"device_id": "dev"}
    assert r.match("site/a/dev") == {"device_id": "dev"}  # '#' also matches the parent
    assert r.match("site/a") is None
    assert route("#").match("anything/at/all") == {}
    assert route("#").match("$SYS/broker/uptime") is None  # wildcards skip $ topics
    assert route("$SYS/#").match("$SYS/broker/uptime") == {}
    assert route("Image").match("Image") == {}
    assert route("Image").match("image") is None  # topics are case-sensitive


def test_first_match_wins_and_no_match_is_none() -> None:
    specific = Route("specific", "sensors/dev-1/{sensor}", "sensor_logger", "readings")
    general = Route("general", "sensors/#", "sensor_logger", "readings")
    assert match_route([specific, general], "sensors/dev-1/t") == (specific, {"sensor": "t"})
    assert match_route([general, specific], "sensors/dev-1/t") == (general, {})
    assert match_route([specific, general], "nothing/here") is None


def test_topic_prefix_puts_every_route_under_a_root(settings: Settings) -> None:
    routes = load_routes(settings, topic_prefix="t/abc123/")
    assert [r.mqtt_filter for r in routes] == [
        "t/abc123/sensors/+/+", "t/abc123/sensor-logger", "t/abc123/Image"]
    matched = match_route(routes, "t/abc123/sensors/d/s")
    assert matched is not None and matched[1] == {"device_id": "d", "sensor": "s"}
    assert match_route(routes, "sensors/d/s") is None
    with pytest.raises(ConfigError, match="must end with '/'"):
        load_routes(settings, topic_prefix="t/abc")
    with pytest.raises(ConfigError, match="wildcard"):
        load_routes(settings, topic_prefix="t/+/")


@pytest.mark.parametrize("template", ["", "a/#/b", "a/{1x}/b", "a/x+/b", "a/{d}/{d}", "a/b#",
                                      "a/{device_id}x"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError):
        route(template)


def test_key_template() -> None:
    reading = Reading(event_id="e1", device_id="dev", sensor="temp", ts_ns=1)
    assert key_for(route("a/b"), reading) == b"dev"
    assert key_for(route("a/b", key="{device_id}:{sensor}"), reading) == b"dev:temp"


BAD_FILES = {
    "invalid_yaml": ("""
        routes:
          - name: a
            topic: a: b
            codec: sensor_logger
        """, 3, "invalid YAML"),
    "unknown_codec": ("""
        routes:
          - name: a
            topic: a
            codec: sensor_logger
          - name: b
            topic: b
            codec: protobuf
        """, 7, "unknown codec 'protobuf'"),
    "bad_template": ("""
        routes:
          - name: a
            topic: "a/#/b"
            codec: sensor_logger
        """, 3, "bad topic template"),
    "codec_needs_fields": ("""
        routes:
          - name: a
            topic: "sensors/+/+"
            codec: json_reading
        """, 3, "needs the named levels"),
    "unknown_key": ("""
        routes:
          - name: a
            topic: a
            codec: sensor_logger
            qos: 2
        """, 5, "unknown key 'qos'"),
    "missing_key": ("""
        routes:
          - name: a
            topic: a
          - name: b
            topic: b
            codec: sensor_logger
        """, 2, "missing ['codec']"),
    "duplicate_name": ("""
        routes:
          - name: a
            topic: a
            codec: sensor_logger
          - name: a
            topic: b
            codec: sensor_logger
        """, 5, "already used on line 2"),
    "duplicate_filter": ("""
        routes:
          - {name: a, topic: "s/{device_id}/{sensor}", codec: json_reading}
          - {name: b, topic: "s/{sensor}/{device_id}", codec: json_reading}
        """, 3, "can never match"),
    "bad_key_template": ("""
        routes:
          - name: a
            topic: a
            codec: sensor_logger
            key: "{sessionId}"
        """, 5, "must use only the fields"),
    "unquoted_brace_template": ("""
        routes:
          - name: a
            codec: sensor_logger
            topic: {device_id}
        """, 4, "must be a non-empty string"),
    "duplicate_yaml_key": ("""
        routes:
          - name: a
            topic: a
            codec: sensor_logger
            codec: seed_image
        """, 5, "key 'codec' twice"),
    "unknown_top_level": ("""
        routes: []
        defaults: {}
        """, 2, "unknown top-level key"),
    "empty_routes": ("""
        routes: []
        """, 1, "non-empty list"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_every_bad_file_names_its_line(case: str, settings: Settings, tmp_path: Path) -> None:
    text, line, message = BAD_FILES[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_routes(settings, path)
    assert f"{path}:{line}:" in str(error.value)
    assert message in str(error.value)


def test_missing_and_empty_files_are_config_errors(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_routes(settings, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="empty"):
        load_routes(settings, write(tmp_path, "# nothing\n"))
