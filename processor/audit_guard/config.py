"""Configuration: defaults < YAML file < environment (AUDIT_GUARD_*, nested with `__`).

Validated once at start. A bad value stops start-up with the key and the reason, e.g.
`exporter.timeout_s: Input should be greater than 0 (got -1)`; unknown keys in the file are
errors too (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import re
from datetime import tzinfo
from pathlib import Path
from typing import Literal

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

from .config_integrity import IntegrityConfig
from .config_otlp import (
    MIN_TOKEN_CHARS,
    ClientTLSConfig,
    ExporterConfig,
    FindingsConfig,
    Seconds,
    ServerConfig,
    ServerTLSConfig,
    check_hostport,
    redact_input,
)
from .config_reconcile import CounterTarget, ReconcileConfig
from .grammar.timestamps import naive_zone

__all__ = [
    "AdminConfig", "ClientTLSConfig", "ConfigError", "CounterTarget", "DeadLetterConfig",
    "ExporterConfig", "ReconcileConfig", "ServerConfig", "ServerTLSConfig", "Settings",
    "TelemetryConfig", "load_settings",
]




class ConfigError(Exception):
    """Raised with a message meant for the operator: which key, what is wrong, how to set it."""


class AdminConfig(BaseModel):
    """The admin HTTP port: /metrics, /healthz, /readyz, the admin API (/api/...) and the
    status page (/)."""

    model_config = ConfigDict(extra="forbid")
    listen: str = Field(
        "127.0.0.1:8081",
        description="host:port of the admin HTTP API: /metrics, /healthz, /readyz, /api/..., "
        "the status page.")
    token: str | None = Field(
        None, min_length=MIN_TOKEN_CHARS,
        description="Bearer token (at least 16 characters) for PUT /api/rules and POST "
        "/api/rules/test; unset: those endpoints are disabled (403).")
    rules_test_open: bool = Field(
        False, description="Let POST /api/rules/test (evaluate a rule on a sample record) be "
        "called without the token.")
    read_token_required: bool = Field(
        False, description="Require the token for the read endpoints that show audit data "
        "(/api/flags, /api/status, the status page: user ids); /healthz, /readyz and /metrics "
        "stay open.")
    max_body_bytes: int = Field(
        1024 * 1024, ge=4096, le=64 * 1024 * 1024,
        description="Largest request body, refused with 413 before it is read (by its "
        "Content-Length, or as it streams in).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted (DNS rebinding defence; `*.example.com` "
        "patterns allowed). Empty: localhost, 127.0.0.1 and ::1 when admin.listen is a loopback "
        "address, any host otherwise.")
    flags_buffer: int = Field(
        1000, ge=10, le=100_000,
        description="Recent flagged records kept in memory for /api/flags and the status page.")
    trace_url: str | None = Field(
        None, pattern=r"^https?://\S*\{trace_id\}\S*$",
        description="Link to a trace UI, `{trace_id}` replaced by the 32 hex digits, e.g. "
        "`http://127.0.0.1:16686/trace/{trace_id}` (Jaeger) or a Grafana Explore/Tempo URL; "
        "the status page and the audit view (/requests/<trace id>) link each trace to it. "
        "Unset: no such links.")
    requests_kept: int = Field(
        200, ge=1, le=100_000,
        description="Requests the audit view (/requests/<trace id>) keeps: the last ones that "
        "had a flagged (or missing) record; older ones answer 404.")
    records_per_request: int = Field(
        20, ge=1, le=1000,
        description="Flagged records kept per request for the audit view (the last ones; each "
        "cut to 4 KiB of text).")

    _listen = field_validator("listen")(check_hostport)

    def hosts(self) -> list[str]:
        """The Host header values the admin port accepts (`*`: any)."""
        if self.allowed_hosts:
            return self.allowed_hosts
        host = self.listen.rpartition(":")[0].strip("[]")
        loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
        return ["localhost", "127.0.0.1", "::1", "[::1]", host] if loopback else ["*"]


class TelemetryConfig(BaseModel):
    """audit-guard's own metrics, also pushed over OTLP when an endpoint is set."""

    model_config = ConfigDict(extra="forbid")
    otlp_endpoint: str | None = Field(
        None, description="host:port of an OTLP/gRPC metrics receiver to push the self-metrics "
        "to as well; unset: /metrics only.")
    export_interval_s: Seconds = Field(30.0, description="Push interval of the OTLP metrics.")

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_hostport(value)


class DeadLetterConfig(BaseModel):
    """The dead-letter spool: span requests downstream refused for good (a partial success
    naming rejected spans, or a code in exporter.permanent_codes) are kept here, fsynced, until
    `audit-guard resend` delivers them. Without a spool such a rejection is NOT dropped: the
    Export is answered UNAVAILABLE, so the collector keeps retrying it from its queue (and its
    queue size shows it)."""

    model_config = ConfigDict(extra="forbid")
    dir: Path | None = Field(
        None, description="The spool's directory. Unset: <reconcile.state_dir>/deadletter when "
        "reconcile.state_dir is set, else no spool.")
    max_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024 * 1024,
        description="Past this (default 1 GiB) the spool refuses new entries and the Export is "
        "answered UNAVAILABLE instead (the collector keeps the data).")


class RedactionConfig(BaseModel):
    """What is taken out of records before they are exported (spans) or written (replay)."""

    model_config = ConfigDict(extra="forbid")
    scrub_secrets: bool = Field(
        True, description="Scrub secrets from free text: SQL PASSWORD '…', key=value pairs "
        "whose key names a secret (password, token, key, secret, api_key, …), Bearer tokens.")
    fields: dict[Literal["user_id", "app_id", "client_address", "server_address",
                         "user_agent"], Literal["keep", "drop", "mask", "pseudonym"]] = Field(
        default_factory=dict, description="Per identity field: keep (default), drop, mask "
        "(***) or pseudonym (keyed HMAC-SHA256: stable, linkable only with the key).")
    pseudonym_key_file: Path | None = Field(
        None, description="The pseudonym key (any bytes, at least 16; keep it secret and the "
        "same on every instance: a new key gives every user a new pseudonym).")

    @model_validator(mode="after")
    def _key(self) -> RedactionConfig:
        if "pseudonym" in self.fields.values():
            if self.pseudonym_key_file is None:
                raise ValueError("redaction.fields uses pseudonym: set "
                                 "redaction.pseudonym_key_file")
            try:
                key = self.pseudonym_key_file.read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"redaction.pseudonym_key_file: cannot read "
                                 f"{self.pseudonym_key_file}: {exc.strerror or exc}") from None
            if len(key) < 16:
                raise ValueError("redaction.pseudonym_key_file: the key is shorter than 16 "
                                 "bytes (e.g. `openssl rand -hex 32 > key`)")
        return self



class Settings(BaseSettings):
    """Everything `audit-guard serve` reads: defaults < YAML file < AUDIT_GUARD_* environment."""

    model_config = SettingsConfigDict(
        env_prefix="AUDIT_GUARD_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    exporter: ExporterConfig = Field(default_factory=ExporterConfig)
    findings: FindingsConfig = Field(default_factory=FindingsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    deadletter: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)
    audited_paths: list[str] = Field(
        default_factory=lambda: [r"/v1/", r"/console/api/", r"/api/"],
        description="Paths whose requests must carry an identity (user_id, app_id): regular "
        "expressions, matched from the start of the path. Defaults: Dify's service API, "
        "console and web app.")
    routes: list[str] = Field(
        default_factory=list,
        description="Extra route templates, e.g. /v1/things/{thing_id}, on top of the built-in "
        "Dify routes.")
    nginx_service_name: str = Field(
        "nginx", min_length=1, description="service.name of the spans of Nginx records.")
    app_service_name: str = Field(
        "app", min_length=1, description="service.name of the spans of app records.")
    pgaudit_service_name: str = Field(
        "postgresql", min_length=1, description="service.name of the spans of pgaudit records.")
    app_field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Generic app audit lines: canonical field → JMESPath expression over the "
        "JSON record, e.g. {\"user_id\": \"actor.id\", \"time\": \"\\\"@timestamp\\\"\"}; "
        "compiled once at start, a bad expression stops start-up naming the field and position.")
    pgaudit_log_line_prefix: str | None = Field(
        None, description="PostgreSQL stderr logs: the server's log_line_prefix, when not one "
        "of the common ones.")
    builtin_rules: bool = Field(
        True, description="Load the built-in audit rules (audit_guard/rules/builtin.yaml).")
    rules_files: list[Path] = Field(
        default_factory=list,
        description="Your YAML audit rule files. Reloaded on SIGHUP and when a file changes; a "
        "set with any error is refused as a whole (the old set keeps running).")
    error_join_window_s: Seconds = Field(
        30.0, description="How long an Nginx error-log event waits for its access record (and "
        "vice versa): how far apart the two may be.")
    error_join_unjoined: Literal["report", "drop"] = Field(
        "report", description="An error-log event joining no access record in the window: "
        "`report` (a span of its own) or `drop` (counted; docs/scale-out.md).")
    lag_threshold_s: Seconds = Field(
        5.0, description="An app record read more than this long after it was written is "
        "flagged delayed.")
    dedup_max_records: int = Field(
        50_000, ge=1000,
        description="How many recent records per source are remembered to spot duplicates (a "
        "minute of traffic at ~800 requests/s). Each check probes a hash set of this size at "
        "random: measured 0.35 µs a record at 50k, 1.7 µs at 200k (the set no longer fits the "
        "CPU cache).")
    max_attribute_bytes: int = Field(
        8192, ge=256, le=1024 * 1024,
        description="A string span attribute (path, user agent, SQL statement, error-log text) "
        "or span name longer than this many UTF-8 bytes is cut on a character boundary and its "
        "record flagged truncated_attribute:<key>, so one record with a 10 MB value cannot make "
        "a span no backend accepts. 8 KiB holds real URLs, user agents and SQL statements "
        "whole; applied once per distinct value. Replay's JSON output keeps the whole value.")
    naive_timezone: str = Field(
        "UTC", description="The zone of times written without an offset (an nginx error-log "
        "header, a Dify text line, an ISO time without zone): an IANA name, in the service and "
        "in replay alike. Never the host's zone, so a verdict does not depend on the TZ of the "
        "machine that reads the log.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the service's own log.")

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
            got = (f" (got {redact_input(err['input'])!r})" if err["type"] != "missing"
                   else "")
            lines.append(f"  {key}: {err['msg']}{got}  [file key {key} or env {env}]")
        where = f" in {config_file}" if config_file else ""
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(lines)) from None
    except (OSError, ValueError) as exc:  # unreadable or non-YAML file
        raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
