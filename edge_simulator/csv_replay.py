"""CSV files to replay: any file with a header row, a time column or none.

The whole file is read and checked at start, so an unreadable file or a bad
cell fails before any device connects, with the line that is wrong.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from contracts.errors import ConfigError, SchemaError
from contracts.events import NS_PER_S, check_id, datetime_to_ns

# Header names taken as the time column when none is named (compared lower case).
TIME_COLUMNS = ("ts", "timestamp", "time", "datetime", "date", "collectedat",
                "time_ns", "timestamp_ns")
# Columns that describe the recording, not a measurement (Sensor Logger exports).
IGNORED_COLUMNS = frozenset({"seconds_elapsed"})


@dataclass(frozen=True, slots=True)
class CsvSeries:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[float | None, ...], ...]  # None: an empty cell, sent as nothing
    times_ns: tuple[int, ...] | None  # None: the file has no time column

    @property
    def typical_gap_ns(self) -> int | None:
        """The mean spacing of the file's times; a loop restarts one gap after the end."""
        if self.times_ns is None or len(self.times_ns) < 2:
            return None
        return (self.times_ns[-1] - self.times_ns[0]) // (len(self.times_ns) - 1)


def parse_time_ns(text: str) -> int:
    """Epoch seconds, ms, µs or ns (told apart by size), or an ISO-8601 /
    'YYYY-MM-DD HH:MM:SS' text, naive meaning UTC."""
    text = text.strip()
    try:
        number = int(text)
    except ValueError:
        try:
            number = float(text)  # type: ignore[assignment]
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError as exc:
                raise SchemaError(f"not a time: {text!r}") from exc
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return datetime_to_ns(moment)
    magnitude = abs(number)
    if magnitude < 1e11:
        return int(number * NS_PER_S)
    if magnitude < 1e14:
        return int(number * 1_000_000)
    if magnitude < 1e17:
        return int(number * 1_000)
    return int(number)


def _number(cell: str) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    return float(cell)


def load_csv(path: Path, time_column: str | None = None) -> CsvSeries:
    """Reads `path` (UTF-8 with or without a byte-order mark, any line ends)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read CSV {path}: {exc}") from exc
    table = [row for row in table if any(cell.strip() for cell in row)]
    if len(table) < 2:
        raise ConfigError(f"CSV {path} needs a header row and at least one data row")
    header = [name.strip() for name in table[0]]
    time_index = _find_time_column(path, header, time_column)
    value_indexes = [i for i, name in enumerate(header)
                     if i != time_index and name.lower() not in IGNORED_COLUMNS]
    if not value_indexes:
        raise ConfigError(f"CSV {path} has no value column besides the time")
    for i in value_indexes:
        try:
            check_id("CSV column name", header[i])
        except SchemaError as exc:
            raise ConfigError(f"CSV {path}: {exc} (it becomes a sensor name)") from exc
    rows: list[tuple[float | None, ...]] = []
    times: list[int] = []
    for line, row in enumerate(table[1:], start=2):
        if len(row) != len(header):
            raise ConfigError(f"CSV {path} line {line}: {len(row)} cells, header has "
                              f"{len(header)}")
        try:
            rows.append(tuple(_number(row[i]) for i in value_indexes))
            if time_index is not None:
                times.append(parse_time_ns(row[time_index]))
        except (ValueError, SchemaError) as exc:
            raise ConfigError(f"CSV {path} line {line}: {exc}") from exc
        if len(times) > 1 and times[-1] < times[-2]:
            raise ConfigError(f"CSV {path} line {line}: time goes backwards")
    return CsvSeries(path=path, columns=tuple(header[i] for i in value_indexes),
                     rows=tuple(rows), times_ns=tuple(times) if time_index is not None else None)


def _find_time_column(path: Path, header: list[str], wanted: str | None) -> int | None:
    if wanted:
        if wanted not in header:
            raise ConfigError(f"CSV {path} has no column {wanted!r}; it has {header}")
        return header.index(wanted)
    lowered = [name.lower() for name in header]
    for name in TIME_COLUMNS:
        if name in lowered:
            return lowered.index(name)
    return None
