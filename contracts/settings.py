"""The one settings class of edgepipe, read from the environment (and `.env`).

Every field is an environment variable of the same name in upper case, listed
with its default in `.env.example` (a test keeps the two in step). Services read
settings through the cached `get_settings()`, never at import time.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.errors import ConfigError

# Passwords that ship in the repository: fine on a laptop, refused in production.
KNOWN_LOCAL_SECRETS = frozenset({"edgepipe-local", "changethis", "example", "password", ""})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False,
        # `NAME=` in .env (as .env.example lists optional settings) means "the default".
        env_ignore_empty=True,
    )

    # --- general ---
    edgepipe_env: Literal["local", "test", "production"] = "local"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    # --- MQTT (Mosquitto) ---
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_username: str = "edgepipe"
    mqtt_password: SecretStr = SecretStr("edgepipe-local")
    # When set, the password is this file's content (first line) instead of MQTT_PASSWORD:
    # how services get their generated account's password (local_stack, compose).
    mqtt_password_file: Path | None = None
    # TLS to the broker (connect to its TLS listener: MQTT_PORT=8883 or MQTT_TLS_PORT locally);
    # MQTT_CA_FILE: the CA to trust (the one generated at set-up), empty = the system's.
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_keepalive: int = Field(30, ge=5)
    mqtt_results_topic: str = "analytics/{device_id}/{sensor}"

    # --- Kafka ---
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_partitions: int = Field(6, ge=1)
    kafka_topic_readings: str = "readings"
    kafka_topic_dlq: str = "readings.dlq"
    kafka_topic_analytics: str = "analytics"
    kafka_topic_windows: str = "readings.windows"
    # librdkafka `debug` contexts for every client the factories build (e.g.
    # "eos,broker,msg,topic"), logged on stderr; "" (off) in normal operation.
    kafka_debug: str = ""

    # --- MongoDB ---
    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017/")
    mongo_db: str = "iot"

    # --- bridge ---
    bridge_http_port: int = Field(8101, ge=0, le=65535)
    bridge_routes_path: Path | None = None  # None: the routes shipped in bridge/routes.yaml
    bridge_share_group: str = "bridge"
    # true: subscribe as `$share/BRIDGE_SHARE_GROUP/...` so several bridges split
    # the load. Off by default: Mosquitto 2.0 drops an offline session's shared
    # subscriptions when it restarts, and with them what devices publish until
    # the bridges have subscribed again; a lone bridge's plain subscription survives.
    bridge_shared_subscription: bool = False
    bridge_max_payload_bytes: int = Field(256 * 1024, ge=64)
    bridge_sink_group: str = "raw-sink"
    bridge_sink_batch_size: int = Field(2000, ge=1)
    bridge_sink_batch_wait_ms: int = Field(200, ge=0)
    # The raw sink's Kafka group session (librdkafka's default). Kafka away longer
    # than this loses the sink's partitions; it rejoins once Kafka is back.
    bridge_sink_session_timeout_ms: int = Field(45_000, ge=6_000)
    # Prepended to every route's MQTT filter (tests and multi-tenant brokers).
    bridge_topic_prefix: str = ""
    # Stable MQTT client id, so a restarted bridge resumes its persistent session:
    # "" means edgepipe-bridge-{hostname}-{bridge_instance}.
    bridge_client_id: str = ""
    bridge_instance: int = Field(0, ge=0)
    # >1: BRIDGE_SPLIT_COUNT bridges (BRIDGE_INSTANCE 0..count-1) each subscribe
    # plainly to every topic and forward only the devices whose id hashes to
    # their instance, acknowledging the rest at once. Plain subscriptions of a
    # persistent session survive a Mosquitto restart (shared ones do not).
    bridge_split_count: int = Field(1, ge=1)
    bridge_session_expiry_s: int = Field(86_400, ge=0)
    # Unacknowledged QoS 1 messages the broker may have in flight to one bridge.
    bridge_receive_maximum: int = Field(1000, ge=1, le=65_535)
    # Kafka counts as unreachable once deliveries have been pending this long.
    bridge_kafka_stall_s: float = Field(10.0, gt=0)
    # Deliveries pending this long (since the last one, or since Kafka came back),
    # or no broker found this long, while a new producer gets a metadata answer:
    # the forwarder's producer is replaced (bridge/kafka_rebuild.py).
    bridge_kafka_rebuild_s: float = Field(30.0, gt=0)
    bridge_shutdown_timeout_s: float = Field(15.0, gt=0)
    # Extra filters (comma-separated, under the prefix) subscribed so that a
    # message there matching no route becomes a "no_route" dead letter.
    bridge_unrouted_filters: str = "sensors/#"

    # --- model worker ---
    model_path: Path = Path("models")
    model_trust_pickle: bool = True
    worker_http_port: int = Field(8102, ge=0, le=65535)
    worker_group: str = "model-worker"
    worker_batch_size: int = Field(2000, ge=1)
    worker_batch_wait_ms: int = Field(100, ge=0)
    worker_model_poll_s: float = Field(1.0, gt=0)
    # Which field of a multi-axis reading to score, per sensor, e.g. {"accelerometer": "z"};
    # sensors not listed are scored on their magnitude.
    worker_score_fields: dict[str, str] = Field(default_factory=dict)
    # Interval grid step: Prophet's sampled interval is computed once per step and interpolated.
    worker_interval_grid_s: int = Field(3600, ge=60)
    # Names the Kafka transactional producer; must differ between concurrent workers and stay
    # the same across a restart (so the restart aborts the dead process's open transaction).
    # Empty: "{worker_group}-{hostname}".
    worker_instance_id: str = ""

    # Stream analytics (model_worker.analytics): tumbling windows on event time, aligned to
    # the epoch. Readings later than grace but within the allowed lateness (both past the
    # window's end) revise a closed window; later ones are counted and logged, not applied.
    analytics_enabled: bool = True
    analytics_window_sizes_s: list[int] = [10, 60, 3600]
    analytics_grace_ms: int = Field(1000, ge=0)
    analytics_allowed_lateness_s: int = Field(60, ge=0)
    # Wall-clock seconds without readings after which a series' open windows are emitted.
    analytics_idle_timeout_s: float = Field(30.0, gt=0)
    analytics_mqtt_window_topic: str = "analytics/{device_id}/{sensor}/window"
    analytics_mqtt_stats_topic: str = "analytics/{device_id}/{sensor}/stats"
    # Seconds between analytics checkpoints (windows and statistics to MongoDB, the
    # windows topic flushed, then the state with its offsets); after a crash the readings
    # since the last one are read again from Kafka. 0: a synchronous checkpoint every batch.
    analytics_checkpoint_interval_s: float = Field(2.0, ge=0)
    # Seconds between writes of the statistics to MongoDB `iot.stats`, at a checkpoint (and
    # always on revoke and shutdown); MQTT still gets every update. FerretDB pays ~0.5-1 ms
    # per replaced document, so with many series writing them at every checkpoint costs
    # more than everything else analytics does. 0: at every checkpoint. Ignored when the
    # checkpoint interval is 0.
    analytics_stats_interval_s: float = Field(10.0, ge=0)
    # Least seconds between MQTT statistics pushes: a statistics message is a cumulative
    # snapshot, so within the interval only each series' latest one is kept, and sent once
    # it is up (also from the idle tick, and on revoke and shutdown). Publishing one costs
    # about as much as analysing the reading when batches come fast. 0: every batch.
    analytics_stats_push_interval_s: float = Field(1.0, ge=0)
    # Readings kept inside each smallest-size window document (0: none), so the API answers
    # a range edge inside it without a raw range query; fuller windows carry none.
    analytics_window_points_max: int = Field(100, ge=0)
    # Larger windows also hold the moments of their next smaller windows (same purpose).
    analytics_window_children: bool = True

    # --- edge simulator ---
    simulator_http_port: int = Field(8103, ge=0, le=65535)
    simulator_http_enabled: bool = True
    simulator_devices: int = Field(1, ge=1)
    simulator_device_prefix: str = ""  # empty: the host name, so compose replicas differ
    simulator_rate_hz: float = Field(1.0, gt=0)
    simulator_jitter: float = Field(0.1, ge=0, le=1)
    simulator_source: Literal["synthetic", "csv"] = "synthetic"
    simulator_format: Literal["sensors", "sensor-logger", "image"] = "sensors"
    # Empty: temperature,humidity (for sensor-logger: accelerometer,gyroscope,barometer)
    simulator_sensors: str = ""
    simulator_csv_path: Path | None = None
    simulator_seed: int | None = None
    simulator_anomaly_rate: float = Field(0.0, ge=0, le=1)
    simulator_topic_prefix: str = ""
    simulator_outbox_limit: int = Field(10_000, ge=1)
    simulator_inflight_window: int = Field(20, ge=1, le=65535)
    simulator_drain_timeout_s: float = Field(10.0, ge=0)
    simulator_progress_interval_s: float = Field(10.0, gt=0)
    # A devices.csv made by `python -m contracts.credentials init`: each simulated device
    # claims one of its accounts (user name = device id). Empty: every device connects
    # with MQTT_USERNAME / MQTT_PASSWORD (the operator account, as the tests do).
    simulator_credentials_file: Path | None = None

    # --- API ---
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_ingest_token: SecretStr = SecretStr("edgepipe-local")
    # Empty: the read endpoints are open. Set: every read endpoint (queries, metrics,
    # stream, dashboard data) needs it, like the ingest token; /health, /ready and
    # /metrics stay open.
    api_read_token: SecretStr = SecretStr("")
    api_page_limit_default: int = Field(100, ge=1)
    api_page_limit_max: int = Field(1000, ge=1)
    api_max_range_days: int = Field(366, ge=1)
    api_stream_heartbeat_s: float = Field(15.0, gt=0)
    api_stream_queue_size: int = Field(1000, ge=1)
    api_stream_overlap_s: float = Field(5.0, ge=0)  # replay/live overlap deduplicated
    api_dashboard_window_s: int = Field(60, ge=5)
    api_dashboard_std_k: float = Field(3.0, gt=0)
    api_ingest_timeout_s: float = Field(30.0, gt=0)
    # /compute/metrics: final windows (past the allowed lateness) kept in memory, and
    # concurrent `_id` lookups per request.
    api_metrics_cache_windows: int = Field(200_000, ge=0)
    api_metrics_lookup_concurrency: int = Field(8, ge=1)

    # --- mongo-express (browse) ---
    mongo_express_port: int = Field(8081, ge=1, le=65535)
    mongo_express_username: str = "admin"
    mongo_express_password: SecretStr = SecretStr("edgepipe-local")

    @model_validator(mode="after")
    def _read_password_file(self) -> Self:
        if self.mqtt_password_file is not None:
            try:
                lines = self.mqtt_password_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"MQTT_PASSWORD_FILE {self.mqtt_password_file}: {exc}") from exc
            if not lines or not lines[0].strip():
                raise ValueError(f"MQTT_PASSWORD_FILE {self.mqtt_password_file} is empty")
            self.mqtt_password = SecretStr(lines[0].strip())
        return self

    @model_validator(mode="after")
    def _check_bridge_split(self) -> Self:
        if self.bridge_split_count > 1 and self.bridge_shared_subscription:
            raise ValueError("BRIDGE_SPLIT_COUNT > 1 and BRIDGE_SHARED_SUBSCRIPTION=true "
                             "are two ways to split; choose one")
        if self.bridge_split_count > 1 and self.bridge_instance >= self.bridge_split_count:
            raise ValueError(f"BRIDGE_INSTANCE must be below BRIDGE_SPLIT_COUNT "
                             f"({self.bridge_split_count})")
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Self:
        if self.edgepipe_env != "production":
            return self
        shipped = {
            "MQTT_PASSWORD": self.mqtt_password,
            "MONGO_EXPRESS_PASSWORD": self.mongo_express_password,
            "API_INGEST_TOKEN": self.api_ingest_token,
        }
        unsafe = [name for name, value in shipped.items()
                  if value.get_secret_value() in KNOWN_LOCAL_SECRETS]
        # Empty means "reads are open", a choice; a shipped value is not.
        read_token = self.api_read_token.get_secret_value()
        if read_token and read_token in KNOWN_LOCAL_SECRETS:
            unsafe.append("API_READ_TOKEN")
        # compose's MongoDB has a root user; its password travels inside MONGO_URL.
        try:
            mongo_password = urlsplit(self.mongo_url.get_secret_value()).password
        except ValueError:
            mongo_password = None
        if mongo_password is not None and unquote(mongo_password) in KNOWN_LOCAL_SECRETS:
            unsafe.append("MONGO_URL (MONGO_ROOT_PASSWORD)")
        if unsafe:
            raise ValueError(
                f"{', '.join(unsafe)} still hold the shipped local password; "
                "set real secrets before running with EDGEPIPE_ENV=production"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once. Tests call `get_settings.cache_clear()`."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"invalid settings: {exc}") from exc
