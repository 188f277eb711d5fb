"""The settings of audit-guard's two OTLP ends: the receiver the collector sends to (server)
and the span exporter (exporter), with their TLS and bearer tokens (issue #13); and the rule
that a secret never shows in an error message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["MIN_TOKEN_CHARS", "ClientTLSConfig", "ExporterConfig", "FindingsConfig",
           "LogsExporterConfig", "ServerConfig",
           "Seconds", "ServerTLSConfig", "bearer_token", "check_hostport", "redact_input"]

_HOSTPORT = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
Seconds = Annotated[float, Field(gt=0)]
MIN_TOKEN_CHARS = 16


def check_hostport(value: str) -> str:
    m = _HOSTPORT.fullmatch(value)
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ValueError("must be host:port, e.g. 127.0.0.1:4327")
    return value


def _read_secret(path: Path, key: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not value:
        raise ValueError(f"{key}: {path} is empty")
    return value


def bearer_token(token: SecretStr | None, token_file: Path | None, key: str) -> str | None:
    """The bearer token given inline or in a file (one of them), at least MIN_TOKEN_CHARS."""
    if token is not None and token_file is not None:
        raise ValueError(f"set {key} or {key}_file, not both")
    value = (token.get_secret_value() if token is not None
             else _read_secret(token_file, f"{key}_file") if token_file is not None else None)
    if value is not None and len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"{key} is {len(value)} characters: use at least {MIN_TOKEN_CHARS} "
                         "(e.g. `openssl rand -hex 32`)")
    return value


def _readable(path: Path | None, key: str) -> None:
    if path is not None and not path.is_file():
        raise ValueError(f"{key}: {path} is not a readable file")


class ServerTLSConfig(BaseModel):
    """TLS on the OTLP receiver (PEM files). With client_ca_file, clients must present a
    certificate signed by that CA (mutual TLS). The files are read again when they change
    (certificate rotation without a restart): at the next connection after the change."""

    model_config = ConfigDict(extra="forbid")
    cert_file: Path | None = Field(
        None, description="Server certificate chain (PEM); with key_file turns TLS on.")
    key_file: Path | None = Field(None, description="Private key of cert_file (PEM).")
    client_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) client certificates must chain to: mutual TLS. "
        "Unset: any client may connect (use a bearer token then).")

    @model_validator(mode="after")
    def _complete(self) -> ServerTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("server.tls needs both cert_file and key_file (or neither)")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("server.tls.client_ca_file needs cert_file and key_file: mutual "
                             "TLS is TLS first")
        for key in ("cert_file", "key_file", "client_ca_file"):
            _readable(getattr(self, key), f"server.tls.{key}")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ClientTLSConfig(BaseModel):
    """TLS towards the trace backend (PEM files), when exporter.insecure is false."""

    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = Field(
        None, description="CA bundle (PEM) the backend's certificate must chain to; unset: "
        "the system roots.")
    cert_file: Path | None = Field(
        None, description="Client certificate chain (PEM) for mutual TLS, with key_file.")
    key_file: Path | None = Field(None, description="Private key of cert_file (PEM).")
    server_name: str | None = Field(
        None, description="Name expected in the backend's certificate, when it is not the "
        "endpoint's host (e.g. the endpoint is an IP address).")

    @model_validator(mode="after")
    def _complete(self) -> ClientTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("exporter.tls needs both cert_file and key_file (or neither)")
        for key in ("ca_file", "cert_file", "key_file"):
            _readable(getattr(self, key), f"exporter.tls.{key}")
        return self

    @property
    def configured(self) -> bool:
        return any(v is not None for v in (self.ca_file, self.cert_file, self.server_name))




_SECRET_KEYS = ("token", "password", "secret", "key")


def redact_input(value: Any) -> Any:
    """A config input as an error message may show it: values under secret-looking keys
    (…token, …password, …secret, …key) replaced by "***"."""
    if isinstance(value, dict):
        return {k: "***" if any(w in str(k).lower() for w in _SECRET_KEYS) and
                not str(k).endswith("_file") else redact_input(v) for k, v in value.items()}
    return value


class ServerConfig(BaseModel):
    """The OTLP/gRPC receiver the collector sends logs and metrics to."""

    model_config = ConfigDict(extra="forbid")
    listen: str = Field(
        "127.0.0.1:4327",
        description="host:port of the OTLP/gRPC receiver (logs, metrics, traces, health).")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024 * 1024,
        description="Largest request accepted, in bytes (default 64 MiB).")
    max_inflight_requests: int = Field(
        8, ge=1, le=256,
        description="Export calls processed at once; more wait briefly (1 s), then get "
        "UNAVAILABLE (the collector retries from its persistent queue). Bounds memory under "
        "overload.")
    max_queued_requests: int = Field(
        128, ge=1, le=10_000,
        description="Calls gRPC holds beyond those in flight before it refuses them outright "
        "with RESOURCE_EXHAUSTED, which an OTLP client does NOT retry: keep it well above what "
        "all senders can have in flight (the shipped collector: 2 exporters x 4 consumers). "
        "Bounds the memory of queued requests.")
    shutdown_grace_s: Seconds = Field(
        20.0, description="On SIGTERM: how long calls in flight may take to finish.")
    tls: ServerTLSConfig = Field(default_factory=ServerTLSConfig)
    bearer_token: SecretStr | None = Field(
        None, description="When set, every OTLP call must carry `authorization: Bearer "
        "<token>` (what the collector's bearertokenauth extension sends), else it is refused "
        "UNAUTHENTICATED. At least 16 characters. The gRPC health service stays open.")
    bearer_token_file: Path | None = Field(
        None, description="bearer_token read from this file (whitespace trimmed).")

    _listen = field_validator("listen")(check_hostport)

    @model_validator(mode="after")
    def _auth(self) -> ServerConfig:
        bearer_token(self.bearer_token, self.bearer_token_file, "server.bearer_token")
        return self

    def token(self) -> str | None:
        """The bearer token callers must send, if any."""
        return bearer_token(self.bearer_token, self.bearer_token_file, "server.bearer_token")


class ExporterConfig(BaseModel):
    """Where spans go: an OTLP/gRPC endpoint (the collector's egress receiver, Tempo, Jaeger)."""

    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(
        "127.0.0.1:4317",
        description="Where spans go: the trace backend's OTLP/gRPC receiver (Tempo, Jaeger: "
        "4317). Sending through a collector instead loses spans it cannot deliver: its OTLP "
        "exporter drops on non-retryable codes.")
    insecure: bool = Field(
        True, description="Plaintext gRPC (false: TLS, with the system roots unless tls.ca_file "
        "is set).")
    tls: ClientTLSConfig = Field(default_factory=ClientTLSConfig)
    bearer_token: SecretStr | None = Field(
        None, description="Sent as `authorization: Bearer <token>` with every request (the "
        "collector's bearertokenauth extension checks it on otlp/egress).")
    bearer_token_file: Path | None = Field(
        None, description="bearer_token read from this file (whitespace trimmed).")
    headers: dict[str, str] = Field(
        default_factory=dict, description="gRPC metadata sent with every request, e.g. auth.")
    timeout_s: Seconds = Field(10.0, description="Deadline of one attempt.")
    retry_initial_backoff_s: Seconds = Field(
        0.5, description="First retry delay; exponential backoff with jitter, a RetryInfo from "
        "the server wins.")
    retry_max_backoff_s: Seconds = Field(5.0, description="Longest delay between two retries.")
    max_wait_s: Seconds = Field(
        20.0,
        description="How long one incoming Export waits for downstream (all retries of every "
        "non-OK code but permanent_codes) before answering UNAVAILABLE, which makes the "
        "collector keep the data and retry later. Also bounded by the caller's own gRPC "
        "deadline (the shipped collector's exporter timeout: 30 s), so keep it below that.")
    max_request_bytes: int = Field(
        3 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024,
        description="Span requests are split to stay at or under this size: gRPC receivers "
        "refuse larger messages (4 MiB by default: the collector's OTLP receiver, Jaeger, "
        "Tempo). Keep it under the downstream receiver's limit (the shipped otlp/egress "
        "receiver: max_recv_msg_size_mib 4).")
    permanent_codes: list[str] = Field(
        default_factory=lambda: ["INVALID_ARGUMENT"],
        description="gRPC codes (by name) meaning \"this request will never be accepted\": its "
        "spans go to the dead-letter spool (deadletter) instead of being retried (a partial "
        "success always does). Every other non-OK answer is retried until max_wait_s, then "
        "answered UNAVAILABLE upstream (the collector keeps the data). An unknown name stops "
        "start-up.")

    _endpoint = field_validator("endpoint")(check_hostport)

    @model_validator(mode="after")
    def _security(self) -> ExporterConfig:
        if self.insecure and self.tls.configured:
            raise ValueError("exporter.tls is set but exporter.insecure is true (plaintext): "
                             "set exporter.insecure: false to use TLS")
        bearer_token(self.bearer_token, self.bearer_token_file, "exporter.bearer_token")
        return self

    def token(self) -> str | None:
        return bearer_token(self.bearer_token, self.bearer_token_file, "exporter.bearer_token")

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


class LogsExporterConfig(ExporterConfig):
    """Where findings go as OTLP log records (findings.output logs or both)."""

    endpoint: str = Field(
        "127.0.0.1:4417",
        description="Where log records go: the collector's otlp/egress receiver, whose logs "
        "pipeline routes them (a JSON-lines file by default; Loki, Elasticsearch/OpenSearch, "
        "Splunk: collector-config/examples/findings-routes.yaml), or any OTLP/gRPC logs "
        "receiver. A log request refused for good is not spooled: the Export is not "
        "acknowledged and the collector keeps the data.")
    permanent_codes: list[str] = Field(
        default_factory=lambda: ["INVALID_ARGUMENT"],
        description="gRPC codes (by name) meaning \"this request will never be accepted\": "
        "not retried, and not acknowledged upstream either (log records have no dead-letter "
        "spool), so the collector keeps the data and the cause must be fixed. An unknown name "
        "stops start-up.")


class FindingsConfig(BaseModel):
    """What the processor emits for each audit record: a span, an OTLP log record, or both."""

    model_config = ConfigDict(extra="forbid")
    output: Literal["spans", "logs", "both"] = Field(
        "spans", description="spans: to `exporter` (Tempo, Jaeger); logs: one OTLP log record "
        "per span (same attributes, flags, rule names, trace and span ids) to "
        "`findings.logs_exporter`; both: each Export is acknowledged upstream only after both "
        "outputs accepted it. Spans an app sends to audit-guard's TraceService are not "
        "findings: they go to `exporter` as spans in every mode "
        "(docs/collector.md#findings-as-log-records).")
    logs_exporter: LogsExporterConfig = Field(default_factory=LogsExporterConfig)
