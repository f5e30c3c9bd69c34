"""`python -m edge_simulator --help`: a fleet of simulated MQTT devices."""

from __future__ import annotations

import sys

import orjson

from contracts.errors import ConfigError
from contracts.logs import configure_logging
from contracts.ops import stop_on_signals
from contracts.settings import get_settings
from edge_simulator.app import run_simulator
from edge_simulator.cli import parse_config


def main(argv: list[str] | None = None) -> int:
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"edge_simulator: {exc}", file=sys.stderr)
        return 2
    configure_logging("edge_simulator", settings.log_level, settings.log_format)
    config = parse_config(argv, settings)
    stop = stop_on_signals()
    try:
        final = run_simulator(config, settings, stop)
    except ConfigError as exc:  # e.g. no free device account in --credentials
        print(f"edge_simulator: {exc}", file=sys.stderr)
        return 2
    # The summary is the program's output; logs stay on stderr.
    print(orjson.dumps({"summary": final.as_dict()}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
