"""Request (query and body) and response schemas of the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator

from api.timeparse import parse_time
from contracts.errors import SchemaError
from contracts.events import check_id, ns_to_datetime, ns_to_iso
from contracts.events import datetime_to_ns as _to_ns

IsoTime = Annotated[datetime, PlainSerializer(lambda d: ns_to_iso(_to_ns(d)), return_type=str)]
T = TypeVar("T")


def _time(kind: str, value: object) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return ns_to_datetime(parse_time(kind, value))
    except SchemaError as exc:
        raise ValueError(str(exc)) from exc


def _id(kind: str, value: object) -> str | None:
    if value is None:
        return None
    try:
        return check_id(kind, value)
    except SchemaError as exc:
        raise ValueError(str(exc)) from exc


def jsonable(value: Any) -> Any:
    """A stored document as JSON-ready data, times as ISO-8601 UTC."""
    if isinstance(value, datetime):
        return ns_to_iso(_to_ns(value))
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


# --- requests ---

class SeriesQuery(BaseModel):
    """Filters shared by the time-series queries; `from`/`to` is half-open."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    device_id: str | None = None
    sensor: str | None = None
    start: datetime | None = Field(None, alias="from", description="ISO-8601 UTC or epoch")
    end: datetime | None = Field(None, alias="to", description="ISO-8601 UTC or epoch")
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int | None = Field(None, ge=1, description="page size, capped by API_PAGE_LIMIT_MAX")

    @field_validator("device_id", "sensor", mode="before")
    @classmethod
    def _ids(cls, value: object, info: Any) -> str | None:
        return _id(info.field_name, value)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _times(cls, value: object, info: Any) -> datetime | None:
        return _time("from" if info.field_name == "start" else "to", value)


class AnalyticsQuery(SeriesQuery):
    anomalies: bool = Field(False, description="only results outside the forecast band")


class WindowsQuery(SeriesQuery):
    field: str | None = Field(None, description="`value`, an axis, or `magnitude`")
    size_s: int | None = Field(None, ge=1)

    @field_validator("field", mode="before")
    @classmethod
    def _field(cls, value: object) -> str | None:
        return _id("field", value)


class StreamQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str | None = None
    sensor: str | None = None
    anomalies: bool = False
    since: datetime | None = Field(None, description="replay results scored since then first")

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, value: object) -> datetime | None:
        return _time("since", value)

    @field_validator("device_id", "sensor", mode="before")
    @classmethod
    def _ids(cls, value: object, info: Any) -> str | None:
        return _id(info.field_name, value)


# --- responses ---

class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")


class SensorSummary(BaseModel):
    sensor: str
    count: int
    first_seen: IsoTime | None
    last_seen: IsoTime | None


class DeviceOut(BaseModel):
    device_id: str
    sensors: list[SensorSummary]
    count: int
    first_seen: IsoTime | None
    last_seen: IsoTime | None


class ReadingOut(BaseModel):
    event_id: str
    device_id: str
    sensor: str
    ts: IsoTime
    ts_ns: int | None = None
    value: float | None = None
    values: dict[str, float] | None = None
    unit: str | None = None
    seq: int | None = None
    received_at: IsoTime | None = None


class ModelOut(BaseModel):
    name: str
    kind: str
    hash: str
    loaded_at: str


class AnalyticsOut(BaseModel):
    event_id: str
    device_id: str
    sensor: str
    ts: IsoTime
    field: str = "value"
    value: float
    yhat: float | None = None
    yhat_lower: float | None = None
    yhat_upper: float | None = None
    residual: float | None = None
    anomaly: bool = False
    model: ModelOut | None = None
    scored_at: IsoTime


class WindowOut(BaseModel):
    id: str
    device_id: str
    sensor: str
    field: str
    size_s: int
    start: IsoTime
    end: IsoTime
    count: int
    sum: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    std: float | None = None
    late_count: int = 0
    revision: int = 0


class MetricsOut(BaseModel):
    result: dict[str, dict[str, float | int | None]]
    errors: list[str]


class IngestOut(BaseModel):
    accepted: int = Field(description="readings acknowledged by Kafka")


class DashboardConfig(BaseModel):
    window_s: int
    std_k: float
