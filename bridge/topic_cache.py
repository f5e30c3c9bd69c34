"""What a topic decides once: its route and the Kafka headers that depend
only on the topic, cached because devices publish to the same few topics over
and over."""

from __future__ import annotations

from bridge.routes import Route, match_route

# Cleared when full, so a stream of one-off topics cannot grow it without bound.
TOPIC_CACHE_MAX = 20_000
QOS_HEADER = {q: ("mqtt_qos", b"%d" % q) for q in range(3)}
RETAIN_HEADER = {False: ("mqtt_retain", b"0"), True: ("mqtt_retain", b"1")}


class TopicInfo:
    """What a topic decides once: its route (or None) and the topic's headers."""

    __slots__ = ("codec_header", "fields", "route", "route_header", "topic_header")

    def __init__(self, topic: str, matched: tuple[Route, dict[str, str]] | None) -> None:
        self.route: Route | None = matched[0] if matched else None
        self.fields: dict[str, str] = matched[1] if matched else {}
        self.topic_header = ("mqtt_topic", topic.encode())
        self.route_header = ("route", self.route.name.encode() if self.route else b"")
        self.codec_header = ("codec", self.route.codec.encode() if self.route else b"")


class TopicCache:
    """Topic -> TopicInfo for one set of routes."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._topics: dict[str, TopicInfo] = {}

    def get(self, topic: str) -> TopicInfo:
        info = self._topics.get(topic)
        if info is None:
            if len(self._topics) >= TOPIC_CACHE_MAX:
                self._topics.clear()
            info = self._topics[topic] = TopicInfo(topic, match_route(self.routes, topic))
        return info
