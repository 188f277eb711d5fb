"""The `reconcile` section of the configuration: completeness (docs/completeness.md) and the
scale-out keys (docs/scale-out.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .config_otlp import Seconds

__all__ = ["CounterTarget", "ReconcileConfig"]


class CounterTarget(BaseModel):
    """An nginx status endpoint audit-guard reads itself (VTS Prometheus metrics usually come
    through the collector instead: its prometheus/nginx_vts receiver)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="http:// or https:// URL, e.g. "
                     "http://127.0.0.1:8081/stub_status.")
    format: Literal["stub_status", "vts_json", "vts_prometheus"] = Field(
        description="What the endpoint serves: stub_status, VTS JSON or VTS Prometheus text.")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        return value


class ReconcileConfig(BaseModel):
    """Completeness: Nginx requests ⇄ app records, Nginx counters ⇄ access log, silence."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(
        True, description="All completeness checks: request, counter and silence level.")
    window_s: Seconds = Field(
        30.0, description="An audited, proxied Nginx request waits this long for its app record.")
    late_horizon_s: Seconds = Field(
        3600.0, description="How long a request reported missing is remembered, to count a "
        "late app record as late. At least window_s.")
    max_pending: int = Field(
        200_000, ge=100,
        description="Requests tracked at once (≤ 300 bytes each); past it the oldest are "
        "evicted and counted (audit_reconcile_evicted_total).")
    resend_hold_s: Seconds = Field(60.0, description="No missing_record while Nginx records "
        "come again, nor this long after: app records may be behind them (docs/scale-out.md).")
    restart_hold_s: float = Field(0.0, ge=0, description="Likewise after a restart that "
        "restored waiting requests (0: a fresh window_s only; scale-out: resend_hold_s).")
    state_dir: Path | None = Field(
        None, description="Where reconcile.sqlite (SQLite, WAL) keeps the pending requests and "
        "error-log events across restarts, so a restart neither forgets nor invents missing "
        "records; compose mounts a volume at /var/lib/audit-guard. Unset: kept in memory only "
        "(a warning says so at start-up).")
    counter_targets: list[CounterTarget] = Field(
        default_factory=list,
        description="Nginx status endpoints read by audit-guard itself, every "
        "scrape_interval_s, e.g. [{\"url\": \"http://127.0.0.1:8081/stub_status\", "
        "\"format\": \"stub_status\"}].")
    scrape_interval_s: Seconds = Field(
        15.0, description="How often the counter_targets are read.")
    settle_s: Seconds = Field(
        10.0, description="A counter interval is compared with the access log only this long "
        "after it closed, so records still on their way (collector batching, ingest lag) are "
        "counted in it.")
    completeness_span_s: Seconds = Field(
        300.0, description="audit_log_completeness_ratio covers the decisions of this last "
        "span of time.")
    silence_threshold_s: Seconds = Field(
        120.0, description="A source that sent records and then none for this long while "
        "traffic continued is silent (audit_stream_silent).")
    zone_counts_max: int = Field(
        1000, ge=0, le=100_000,
        description="audit_nginx_records_by_zone_total: access-log records received per server "
        "zone ($server_name, else the Host), summed over instances by the Prometheus rule "
        "zone:audit_nginx_records_shortfall:increase5m (docs/scale-out.md). At most this many "
        "distinct zones; records of any further zone count as zone=\"other\" (raise it above "
        "the number of server names). 0: not exported.")
    membership_dns: str | None = Field(
        None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9])?$",
        description="Scale-out: the DNS name the collector's load_balancing resolves to find "
        "the processors (e.g. the headless Service audit-guard-processor.audit-guard.svc."
        "cluster.local). Resolved every membership_poll_s; a changed set of addresses is a "
        "membership change (docs/scale-out.md#membership-changes). Unset: not polled (one "
        "instance, or the static resolver: POST /api/membership-change).")
    membership_poll_s: Seconds = Field(
        5.0, description="How often membership_dns is resolved (the collector's dns resolver "
        "polls every 5 s by default).")
    membership_grace_s: float | None = Field(
        None, gt=0, description="After a membership change, a missing_record whose Nginx "
        "record was logged within this long before or after the change is not reported but "
        "counted "
        "(audit_missing_suppressed_total{reason=\"membership_change\"}). Unset: 2 × window_s.")

    @model_validator(mode="after")
    def _horizon(self) -> ReconcileConfig:
        if self.late_horizon_s < self.window_s:
            raise ValueError(f"late_horizon_s ({self.late_horizon_s}) must be at least "
                             f"window_s ({self.window_s})")
        return self

    def grace_s(self) -> float:
        """membership_grace_s, or its default: two windows."""
        return (self.membership_grace_s if self.membership_grace_s is not None
                else 2 * self.window_s)
