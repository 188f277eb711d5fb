"""Configuration: defaults < YAML file < environment (AUDIT_GUARD_*, nested with `__`).

Validated once at start. A bad value stops start-up with the key and the reason, e.g.
`exporter.timeout_s: Input should be greater than 0 (got -1)`; unknown keys in the file are
errors too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import re
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from .grammar.timestamps import naive_zone

__all__ = [
    "AdminConfig", "ConfigError", "DeadLetterConfig", "ExporterConfig", "ServerConfig", "Settings",
    "TelemetryConfig", "load_settings",
]

_HOSTPORT = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
Seconds = Annotated[float, Field(gt=0)]


class ConfigError(Exception):
    """Raised with a message meant for the operator: which key, what is wrong, how to set it."""


def _check_hostport(value: str) -> str:
    m = _HOSTPORT.fullmatch(value)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ValueError("must be host:port, e.g. 127.0.0.1:4327")
    return value


class ServerConfig(BaseModel):
    """The OTLP/gRPC receiver the collector sends logs and metrics to."""

    model_config = ConfigDict(extra="forbid")
    listen: str = "127.0.0.1:4327"
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    # Export calls processed at once; more wait briefly, then get UNAVAILABLE (the collector
    # retries from its persistent queue). Bounds memory under overload.
    max_inflight_requests: int = Field(8, ge=1, le=256)
    # Calls gRPC holds beyond that before it refuses them outright (RESOURCE_EXHAUSTED, which
    # an OTLP client does NOT retry): keep it well above what all senders can have in flight
    # (the shipped collector: 2 exporters x 4 consumers). Bounds the memory of queued requests.
    max_queued_requests: int = Field(128, ge=1, le=10_000)
    shutdown_grace_s: Seconds = 20.0

    _listen = field_validator("listen")(_check_hostport)


class ExporterConfig(BaseModel):
    """Where spans go: an OTLP/gRPC endpoint (the collector's egress receiver, Tempo, Jaeger)."""

    model_config = ConfigDict(extra="forbid")
    # The trace backend's OTLP/gRPC receiver (Tempo, Jaeger: 4317). Sending through a collector
    # instead loses spans it cannot deliver: its OTLP exporter drops on non-retryable codes.
    endpoint: str = "127.0.0.1:4317"
    insecure: bool = True
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: Seconds = 10.0  # one attempt
    retry_initial_backoff_s: Seconds = 0.5
    retry_max_backoff_s: Seconds = 5.0
    # How long one incoming Export waits for downstream (all retries) before answering
    # UNAVAILABLE, which makes the collector keep the data and retry later. Also bounded by the
    # caller's own gRPC deadline (the shipped collector's exporter timeout: 30 s).
    max_wait_s: Seconds = 20.0
    # Span requests are split to stay at or under this size: gRPC receivers refuse larger
    # messages (4 MiB by default: the collector's OTLP receiver, Jaeger, Tempo). Keep it under
    # the downstream receiver's limit (the shipped otlp/egress receiver: max_recv_msg_size_mib 4).
    max_request_bytes: int = Field(3 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    # gRPC codes meaning "this request will never be accepted": its spans go to the dead-letter
    # spool (`deadletter`) instead of being retried. Every other non-OK answer is retried until
    # max_wait_s, then answered UNAVAILABLE upstream (the collector keeps the data).
    permanent_codes: list[str] = Field(default_factory=lambda: ["INVALID_ARGUMENT"])

    _endpoint = field_validator("endpoint")(_check_hostport)

    @field_validator("permanent_codes")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        import grpc

        known = {c.name for c in grpc.StatusCode} - {"OK"}
        bad = [c for c in value if c not in known]
        if bad:
            raise ValueError(f"unknown gRPC status code(s) {bad}; use names such as "
                             f"INVALID_ARGUMENT, PERMISSION_DENIED")
        return value


class AdminConfig(BaseModel):
    """The admin HTTP port: /metrics, /healthz, /readyz, the admin API (/api/...) and the
    status page (/)."""

    model_config = ConfigDict(extra="forbid")
    listen: str = "127.0.0.1:8081"
    # Bearer token for the mutating API (PUT /api/rules); unset: those endpoints are disabled.
    token: str | None = Field(None, min_length=1)
    # Recent flagged records kept in memory for /api/flags and the status page.
    flags_buffer: int = Field(1000, ge=10, le=100_000)

    _listen = field_validator("listen")(_check_hostport)


class TelemetryConfig(BaseModel):
    """audit-guard's own metrics, also pushed over OTLP when an endpoint is set."""

    model_config = ConfigDict(extra="forbid")
    otlp_endpoint: str | None = None  # host:port of an OTLP/gRPC metrics receiver
    export_interval_s: Seconds = 30.0

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _check_hostport(value)


class CounterTarget(BaseModel):
    """An nginx status endpoint audit-guard reads itself (VTS Prometheus metrics usually come
    through the collector instead: its prometheus/nginx_vts receiver)."""

    model_config = ConfigDict(extra="forbid")
    url: str  # e.g. http://127.0.0.1:8081/stub_status
    format: Literal["stub_status", "vts_json", "vts_prometheus"]

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        return value


class ReconcileConfig(BaseModel):
    """Completeness: Nginx requests ⇄ app records, Nginx counters ⇄ access log, silence."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    # An audited, proxied Nginx request waits this long for its app record.
    window_s: Seconds = 30.0
    # How long a request reported missing is remembered, to count a late app record as late.
    late_horizon_s: Seconds = 3600.0
    # Requests tracked at once (≤ 300 bytes each); past it the oldest are evicted and counted.
    max_pending: int = Field(200_000, ge=100)
    # Where the pending requests are persisted (SQLite, WAL), so a restart neither forgets nor
    # invents missing records. Unset: kept in memory only (a warning says so at start-up).
    state_dir: Path | None = None
    # Nginx status endpoints read by audit-guard itself, every scrape_interval_s.
    counter_targets: list[CounterTarget] = Field(default_factory=list)
    scrape_interval_s: Seconds = 15.0
    # A counter interval is compared with the access log only this long after it closed, so
    # records still on their way (collector batching, ingest lag) are counted in it.
    settle_s: Seconds = 10.0
    # audit_log_completeness_ratio covers the decisions of this last span of time.
    completeness_span_s: Seconds = 300.0
    # A source that sent records and then none for this long while traffic continued is silent.
    silence_threshold_s: Seconds = 120.0

    @model_validator(mode="after")
    def _horizon(self) -> ReconcileConfig:
        if self.late_horizon_s < self.window_s:
            raise ValueError(f"late_horizon_s ({self.late_horizon_s}) must be at least "
                             f"window_s ({self.window_s})")
        return self


class DeadLetterConfig(BaseModel):
    """The dead-letter spool: span requests downstream refused for good (a partial success
    naming rejected spans, or a code in exporter.permanent_codes) are kept here, fsynced, until
    `audit-guard resend` delivers them. Without a spool such a rejection is NOT dropped: the
    Export is answered UNAVAILABLE, so the collector keeps retrying it from its queue (and its
    queue size shows it)."""

    model_config = ConfigDict(extra="forbid")
    # Unset: `<reconcile.state_dir>/deadletter` when reconcile.state_dir is set, else no spool.
    dir: Path | None = None
    # Past this the spool refuses new entries and the Export is answered UNAVAILABLE instead.
    max_bytes: int = Field(1024 * 1024 * 1024, ge=1024 * 1024)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AUDIT_GUARD_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    exporter: ExporterConfig = Field(default_factory=ExporterConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    deadletter: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    # Paths whose requests must carry an identity (user_id, app_id); regular expressions,
    # matched from the start of the path. Defaults: Dify's service API, console and web app.
    audited_paths: list[str] = Field(
        default_factory=lambda: [r"/v1/", r"/console/api/", r"/api/"]
    )
    # Extra route templates (`/v1/things/{thing_id}`) on top of the built-in Dify routes.
    routes: list[str] = Field(default_factory=list)
    # service.name of the spans of each source.
    nginx_service_name: str = Field("nginx", min_length=1)
    app_service_name: str = Field("app", min_length=1)
    pgaudit_service_name: str = Field("postgresql", min_length=1)
    # Generic app audit lines: canonical field → JMESPath expression over the JSON record,
    # e.g. {"user_id": "actor.id", "time": "\"@timestamp\""}; compiled once at start.
    app_field_map: dict[str, str] = Field(default_factory=dict)
    # PostgreSQL stderr logs: the server's log_line_prefix, when not one of the common ones.
    pgaudit_log_line_prefix: str | None = None
    # Audit rules: the built-in set (processor/rules/builtin.yaml) and/or YAML rule files.
    # Reloaded on SIGHUP and when a file changes; a set with any error is refused as a whole.
    builtin_rules: bool = True
    rules_files: list[Path] = Field(default_factory=list)
    # How long an Nginx error-log event waits for its access record (and vice versa).
    error_join_window_s: Seconds = 30.0
    # An app record read more than this long after it was written is flagged `delayed`.
    lag_threshold_s: Seconds = 5.0
    # How many recent records per source are remembered to spot duplicates. Each check probes
    # a hash set of this size at random: measured 0.35 µs a record at 50k, 1.7 µs at 200k (the
    # set no longer fits the CPU cache).
    dedup_max_records: int = Field(50_000, ge=1000)
    # A string span attribute (path, user agent, SQL statement, …) longer than this many UTF-8
    # bytes is cut (on a character boundary) and its record flagged truncated_attribute:<key>,
    # so one record with a 10 MB value cannot make a span no backend accepts. Replay's JSON
    # output keeps the whole value.
    max_attribute_bytes: int = Field(8192, ge=256, le=1024 * 1024)
    # The zone of times written without an offset (an nginx error-log header, a Dify text
    # line, an ISO time without zone): an IANA name. Never the host's zone, so a verdict does
    # not depend on the TZ of the machine that reads the log.
    naive_timezone: str = "UTC"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("naive_timezone")
    @classmethod
    def _check_naive_timezone(cls, value: str) -> str:
        naive_zone(value)  # raises ValueError naming the zone; pydantic names the key
        return value

    def naive_tz(self) -> tzinfo:
        """`naive_timezone` as a tzinfo, for the sources' `local_tz`/`tz` arguments."""
        return naive_zone(self.naive_timezone)

    @field_validator("audited_paths")
    @classmethod
    def _compile_paths(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"item {i} {pattern!r} is not a valid regex: {exc}") from None
        return value

    @field_validator("routes")
    @classmethod
    def _check_routes(cls, value: list[str]) -> list[str]:
        for template in value:
            if not template.startswith("/"):
                raise ValueError(f"route template {template!r} must start with '/'")
        return value

    def deadletter_dir(self) -> Path | None:
        """Where the dead-letter spool lives; None: no spool (permanent rejections are answered
        UNAVAILABLE upstream instead of being spooled)."""
        if self.deadletter.dir is not None:
            return self.deadletter.dir
        if self.reconcile.state_dir is not None:
            return self.reconcile.state_dir / "deadletter"
        return None

    def audited_path_regex(self) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{p})" for p in self.audited_paths) or r"(?!)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Load and validate; raise ConfigError naming every bad key."""
    cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist or is not a file")

        class _FromFile(Settings):
            model_config = SettingsConfigDict(yaml_file=config_file)

        cls = _FromFile
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            env = "AUDIT_GUARD_" + "__".join(str(p) for p in err["loc"]).upper()
            got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
            lines.append(f"  {key}: {err['msg']}{got}  [file key {key} or env {env}]")
        where = f" in {config_file}" if config_file else ""
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(lines)) from None
    except (OSError, ValueError) as exc:  # unreadable or non-YAML file
        raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
