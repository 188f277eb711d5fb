"""The admin API's request and response bodies (their JSON Schema is the OpenAPI contract).

Shared by the API (audit_guard.admin.app) and the status page (audit_guard.admin.page).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "RULE_LIST",
    "DeadLetterOut",
    "ErrorBody",
    "EventOut",
    "FlagEvidenceOut",
    "FlagOut",
    "FlagsOut",
    "ReadyOut",
    "RecordIn",
    "RequestOut",
    "RequestRecordOut",
    "RuleIn",
    "RuleOut",
    "RuleTestIn",
    "RuleTestOut",
    "RulesOut",
    "RulesReplaced",
    "SourceOut",
    "StatusOut",
]


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, for an operator")
    details: list[str] = Field(default_factory=list, description="one line per problem")


class ReadyOut(BaseModel):
    ready: bool
    reason: str = Field(description="`ok`, or why the service is not ready")
    receiver_started: bool = Field(description="the OTLP/gRPC receiver is listening")
    last_export_ok_unix_nano: int | None = Field(
        description="when spans were last accepted downstream")
    last_export_failed_unix_nano: int | None = Field(
        description="when handing spans downstream last ended in UNAVAILABLE")
    error: str | None = Field(None, description="set when not ready (same as reason)")


class RuleIn(BaseModel):
    """One audit rule, as in a rules file (docs/rules.md)."""

    # strict: what the schema promises is what is accepted (no "1" for 1, no null for {}).
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=128,
                      examples=["dataset_access_denied"])
    when: str = Field(description="JMESPath condition over the record view",
                      max_length=4096,  # rules_api.MAX_EXPRESSION_CHARS
                      examples=["status == `403` && starts_with(path || '', '/v1/datasets/')"])
    severity: Literal["info", "low", "medium", "high", "critical"]  # ruleset.SEVERITIES
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


RULE_LIST: TypeAdapter[list[RuleIn]] = TypeAdapter(list[RuleIn])


class RuleOut(BaseModel):
    name: str
    description: str
    when: str
    severity: str
    labels: dict[str, str]
    source: str = Field(description="the file the rule came from (or `PUT /api/rules`)")
    index: int = Field(description="1-based position in that file")
    matches: int = Field(description="records matched since start (audit_rule_matches_total)")
    errors: int = Field(description="records the rule raised on (and so did not match)")


class RulesOut(BaseModel):
    rules: list[RuleOut]
    rules_files: list[str] = Field(description="configured rule files (reloaded on change)")
    builtin_rules: bool = Field(description="whether the configured set includes the built-in")


class RulesReplaced(BaseModel):
    active: list[str] = Field(description="names of the rules now active, in order")
    count: int
    note: str


class RecordIn(BaseModel):
    """A normalized record as rules see it. Other keys (e.g. `trace_id` of a record copied from
    /api/flags) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    user_id: str | None = None
    app_id: str | None = None
    method: str | None = None
    path: str | None = None
    route: str | None = None
    status: int | None = None
    source: str | None = None
    flags: list[str] = Field(default_factory=list)
    fields: dict[str, Any] = Field(default_factory=dict)
    age_s: int | None = Field(None, description="seconds from the record's time to its receipt "
                              "(docs/rules.md, freshness)")


class RuleTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    record: RecordIn
    rule: RuleIn | None = Field(None, description="test this rule instead of the active set")


class RuleTestOut(BaseModel):
    matches: list[str] = Field(description="names of the matching rules, in rule order")
    evaluated: int = Field(description="how many rules were evaluated")
    errors: list[str] = Field(description="rules that raised on this record (no match)")
    elapsed_us: float = Field(description="evaluation time in microseconds")
    active_set: bool = Field(description="true: the active set was evaluated")


class FlagOut(BaseModel):
    time_unix_nano: int | None = Field(description="when the request happened (the record)")
    received_unix_nano: int = Field(description="when audit-guard handed the record on")
    source: str
    trace_id: str
    span_id: str
    flags: list[str]
    user_id: str | None
    app_id: str | None
    method: str | None
    path: str | None
    status: int | None


Scalar = str | int | float | bool


class EventOut(BaseModel):
    time_unix_nano: int | None = Field(description="when the event was written (nginx: the "
                                                    "error-log line's time)")
    name: str = Field(examples=["nginx error: upstream_closed"])
    attributes: dict[str, Scalar] = Field(description="e.g. the error-log message, level, "
                                                      "connection")


class RequestRecordOut(FlagOut):
    """One kept record of a request: what its span shows, plus the evidence fields."""

    parent_span_id: str | None
    name: str | None = Field(description="span name when not `{method} {route}`")
    route: str | None
    duration_ns: int | None
    client_address: str | None
    server_address: str | None
    user_agent: str | None
    body_bytes_sent: int | None
    completed: bool | None = Field(description="nginx $request_completion: OK → true, "
                                               "empty → false")
    content_length: int | None = Field(description="the Content-Length sent to the client")
    upstream_length: int | None = Field(description="body bytes the upstream delivered")
    compressed: bool | None
    ingest_lag_s: float | None = Field(description="read time − write time (container "
                                                   "logs); null when not known")
    trace_id_generated: bool | None
    violations: list[str]
    truncation_reasons: list[str]
    unparsed: list[str] = Field(description="fields present but not parseable")
    attributes: dict[str, Scalar] = Field(description="the span's source attributes "
                                                      "(redacted as the span is)")
    events: list[EventOut] = Field(description="span events: the error-log evidence")
    log_fields: dict[str, Scalar] = Field(
        description="fields of the log line that explain a flag (upstream_status, "
                    "upstream_bytes_received, request_completion, connection, …) and the "
                    "written value of an invalid field")
    file: str | None
    line: int | None
    clipped: bool = Field(description="some text was cut to 4 KiB in this view")
    missing: bool = Field(description="a missing_record marker, not a record that came")


class FlagEvidenceOut(BaseModel):
    flag: str
    source: str = Field(description="the record that carries it")
    span_id: str
    meaning: str = Field(description="what the flag says, in words")
    evidence: dict[str, Scalar | None] = Field(description="the values that explain it")


class RequestOut(BaseModel):
    """What audit-guard's recent window holds of one request (GET /api/requests/{trace_id})."""

    trace_id: str
    trace_url: str | None = Field(description="the trace in the trace UI (admin.trace_url)")
    user_id: str | None = Field(description="who: from the nginx record, else the first kept "
                                            "record that names one")
    app_id: str | None
    method: str | None
    path: str | None
    status: int | None
    time_unix_nano: int | None
    flags: list[FlagEvidenceOut] = Field(description="every flag of every kept record")
    records: list[RequestRecordOut] = Field(description="the kept records, as received")
    sources_kept: list[str] = Field(description="sources with a kept record (or marker)")
    missing: list[str] = Field(description="sources reported missing (missing_record)")
    note: str = Field(description="what the window does not keep")


class FlagsOut(BaseModel):
    flags: list[FlagOut] = Field(description="newest first")
    buffer_size: int = Field(description="how many flagged records are kept (admin.flags_buffer)")


class SourceOut(BaseModel):
    name: str
    records_total: int
    flagged_total: int
    last_seen_unix_nano: int | None
    seconds_since_last_seen: float | None
    last_flag_unix_nano: int | None
    last_lag_s: float | None
    avg_lag_s: float | None
    completeness: float | None = Field(
        description="share of the records that should exist which arrived, over "
                    "reconcile.completeness_span_s (nginx: against its VTS/stub_status counters, "
                    "the lowest server zone; app: against audited Nginx requests); null when "
                    "there is nothing to compare with yet")
    silent: bool | None = Field(
        description="the source sent records, then none for reconcile.silence_threshold_s "
                    "while traffic continued; null before it sent any")
    health: Literal["green", "amber", "red"]
    health_reason: str


class DeadLetterOut(BaseModel):
    """The dead-letter spool: spans downstream refused for good, waiting for `audit-guard
    resend`."""

    directory: str
    entries: int
    spans: int
    bytes: int
    max_bytes: int = Field(description="deadletter.max_bytes; past it Exports are answered "
                                       "UNAVAILABLE instead of spooled")
    oldest_unix_nano: int | None = Field(description="when the oldest entry was spooled")
    reasons: dict[str, int] = Field(description="why downstream refused them → spans")
    corrupt_files: int = Field(description="files set aside in corrupt/ (never resent)")


class MembershipOut(BaseModel):
    """The scale-out ring as this instance sees it (docs/scale-out.md#membership-changes)."""

    dns_name: str | None = Field(description="reconcile.membership_dns; null: not polled")
    addresses: list[str] | None = Field(description="what it last resolved to")
    grace_s: float = Field(description="reconcile.membership_grace_s (or its default)")
    last_change_unix_nano: int | None
    last_change_trigger: str | None = Field(description="dns or api")
    grace_until_unix_nano: int | None = Field(
        description="end of the grace of the last change still open; null: none open")
    suppressed_total: int = Field(
        description="missing_record reports kept back since start "
                    "(audit_missing_suppressed_total)")


class StatusOut(BaseModel):
    now_unix_nano: int
    lag_threshold_s: float
    ready: ReadyOut
    sources: list[SourceOut]
    deadletter: DeadLetterOut | None = Field(
        None, description="null when no spool is configured (deadletter.dir and "
                          "reconcile.state_dir unset): permanent rejections are then answered "
                          "UNAVAILABLE and stay in the collector's queue")
    membership: MembershipOut | None = Field(
        None, description="scale-out membership changes; null when reconciliation is off")


