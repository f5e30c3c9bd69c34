"""One error tree for edgepipe: catch ``EdgepipeError`` to catch them all.

Library errors are re-raised ``from`` the original so the cause stays visible.
"""


class EdgepipeError(Exception):
    """Root of every error edgepipe raises on purpose."""


class ConfigError(EdgepipeError):
    """A setting, routes file or model path is unusable; raised at start."""


class SchemaError(EdgepipeError):
    """A value does not fit the event schema (bad id, bad time, bad number)."""


class DecodeError(SchemaError):
    """A payload cannot become readings. ``reason`` is a short, stable code
    used as a metric label; the message is for humans."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ServiceUnavailable(EdgepipeError):
    """A backing service (Mosquitto, Kafka, MongoDB) cannot be reached."""


class ModelError(EdgepipeError):
    """A model file cannot be loaded or a model cannot score."""
