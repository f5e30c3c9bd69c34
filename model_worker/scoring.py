"""The pure steps of the worker: decode a poll of Kafka records into a batch
(bad records become dead letters) and score a batch with the models in use,
one vectorised call per model."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from contracts.errors import ModelError, SchemaError
from contracts.events import Reading, check_id, check_number
from contracts.results import ScoredResult
from contracts.windows import MAGNITUDE_FIELD, SCALAR_FIELD
from model_worker.models import LoadedModel
from model_worker.stage import ConsumedBatch

log = logging.getLogger(__name__)

ModelResolver = Callable[[str], LoadedModel | None]


@dataclass(slots=True, frozen=True)
class KafkaRecord:
    value: bytes | None
    partition: int
    offset: int


@dataclass(slots=True, frozen=True)
class DeadLetter:
    reason: str
    error: str
    record: KafkaRecord


def scored_value(reading: Reading, fields: Mapping[str, str]) -> tuple[str, float]:
    """(field, value) to score: `value` for scalar readings; for multi-axis
    ones the axis configured for the sensor, else the magnitude."""
    if reading.value is not None:
        return SCALAR_FIELD, reading.value
    if not reading.values:
        raise SchemaError("reading has neither value nor values")
    axis = fields.get(reading.sensor)
    if axis is None:
        magnitude = reading.magnitude()
        assert magnitude is not None  # values is non-empty
        return MAGNITUDE_FIELD, magnitude
    if axis not in reading.values:
        raise SchemaError(f"reading has no {axis!r} axis, which WORKER_SCORE_FIELDS "
                          f"names for sensor {reading.sensor!r}")
    return axis, reading.values[axis]


def decode_records(topic: str, records: list[KafkaRecord], fields: Mapping[str, str]
                   ) -> tuple[ConsumedBatch, list[DeadLetter]]:
    batch = ConsumedBatch(topic=topic)
    dead: list[DeadLetter] = []
    for record in records:
        if record.value is None:
            dead.append(DeadLetter("empty", "record has no value", record))
            continue
        try:
            reading = Reading.from_json(record.value)
            check_id("device_id", reading.device_id)
            check_id("sensor", reading.sensor)
            check_number("value", scored_value(reading, fields)[1])
        except SchemaError as exc:
            dead.append(DeadLetter("not_scorable", str(exc), record))
            continue
        batch.readings.append(reading)
        batch.partitions.append(record.partition)
        batch.offsets.append(record.offset)
    return batch, dead


@dataclass(slots=True)
class ScoreOutcome:
    results: list[ScoredResult]
    # sensor -> count of readings passed through unscored, by reason
    unscored: dict[tuple[str, str], int] = field(default_factory=dict)


def score_batch(readings: list[Reading], resolve: ModelResolver,
                fields: Mapping[str, str], now_ns: int) -> ScoreOutcome:
    """Results in the readings' order. Readings are grouped by the model that
    serves their sensor and each model is called once on its group."""
    groups: dict[str, list[int]] = defaultdict(list)
    models: dict[str, LoadedModel] = {}
    chosen = [scored_value(r, fields) for r in readings]
    results: list[ScoredResult | None] = [None] * len(readings)
    outcome = ScoreOutcome(results=[])
    for index, reading in enumerate(readings):
        model = resolve(reading.sensor)
        if model is None:
            results[index] = _unscored(reading, chosen[index], now_ns)
            key = (reading.sensor, "no_model")
            outcome.unscored[key] = outcome.unscored.get(key, 0) + 1
            continue
        models[model.stamp.name] = model
        groups[model.stamp.name].append(index)
    for name, indexes in groups.items():
        model = models[name]
        ts_ns = np.fromiter((readings[i].ts_ns for i in indexes), np.int64, len(indexes))
        values = np.fromiter((chosen[i][1] for i in indexes), np.float64, len(indexes))
        try:
            yhat, lower, upper = model.forecast(ts_ns, values)
        except ModelError as exc:
            log.error("model failed on a batch, readings pass through unscored",
                      extra={"model": name, "error": str(exc), "readings": len(indexes)})
            for i in indexes:
                results[i] = _unscored(readings[i], chosen[i], now_ns)
                key = (readings[i].sensor, "model_error")
                outcome.unscored[key] = outcome.unscored.get(key, 0) + 1
            continue
        for j, i in enumerate(indexes):
            reading = readings[i]
            results[i] = ScoredResult(
                event_id=reading.event_id, device_id=reading.device_id, sensor=reading.sensor,
                ts_ns=reading.ts_ns, value=chosen[i][1], yhat=float(yhat[j]),
                yhat_lower=float(lower[j]), yhat_upper=float(upper[j]), model=model.stamp,
                scored_at_ns=now_ns, field=chosen[i][0])
    outcome.results = [r for r in results if r is not None]
    return outcome


def _unscored(reading: Reading, chosen: tuple[str, float], now_ns: int) -> ScoredResult:
    return ScoredResult(
        event_id=reading.event_id, device_id=reading.device_id, sensor=reading.sensor,
        ts_ns=reading.ts_ns, value=chosen[1], yhat=None, yhat_lower=None, yhat_upper=None,
        model=None, scored_at_ns=now_ns, field=chosen[0])
