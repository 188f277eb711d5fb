"""AuditRecord → OTLP spans (OpenTelemetry HTTP semantic conventions + audit.* attributes).

Spans are built in place in a ScopeSpans message. Attribute key/value pairs repeat across
records (the same methods, routes, users, apps, flags), so each distinct pair is serialized once
with the protobuf stubs — as a one-attribute Span — and merged into new spans by
`MergeFromString`, which appends repeated fields. This keeps span building at a few
microseconds per record; the stubs' per-attribute `add()` alone costs more than our whole
per-record budget.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from . import __version__
from .record import AuditRecord

__all__ = ["SpanBuilder", "new_resource_spans"]

SCOPE_NAME = "audit-guard"
_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR
AttrValue = str | int | bool | tuple[str, ...]


def _any_value(value: AttrValue) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, tuple):
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
    return AnyValue(string_value=value)


class _AttributeCache:
    """(key, value) → serialized one-attribute Span; bounded (cleared when full)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._cache: dict[tuple[str, AttrValue], bytes] = {}
        self._max = max_entries

    def get(self, key: str, value: AttrValue) -> bytes:
        # bool and int compare equal (True == 1): keep the type in the cache key's value.
        ck = (key, value) if not isinstance(value, bool) else (key, ("bool", str(value)))
        blob = self._cache.get(ck)  # type: ignore[arg-type]
        if blob is None:
            blob = Span(attributes=[KeyValue(key=key, value=_any_value(value))]).SerializeToString()
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[ck] = blob  # type: ignore[index]
        return blob


def new_resource_spans(service_name: str, extra: Iterable[KeyValue] = ()) -> ResourceSpans:
    rs = ResourceSpans(
        resource=Resource(
            attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service_name))]
        )
    )
    rs.resource.attributes.extend(extra)
    rs.scope_spans.add().scope.name = SCOPE_NAME
    rs.scope_spans[0].scope.version = __version__
    return rs


class SpanBuilder:
    """Appends one SERVER span per audited request to a ScopeSpans."""

    def __init__(self) -> None:
        self._attr = _AttributeCache()

    def add_server_span(self, scope: ScopeSpans, rec: AuditRecord, now_ns: int) -> Span:
        a = self._attr.get
        span = scope.spans.add()
        span.trace_id = rec.trace_id
        span.span_id = rec.span_id
        if rec.parent_span_id:
            span.parent_span_id = rec.parent_span_id
        method = rec.method or "HTTP"
        span.name = f"{method} {rec.route}" if rec.route else method
        span.kind = _SERVER
        end = rec.time_unix_nano or now_ns
        span.end_time_unix_nano = end
        span.start_time_unix_nano = end - rec.duration_ns

        parts = [a("audit.source", rec.source), a("http.request.method", method)]
        if rec.path is not None:
            parts.append(a("url.path", rec.path))
        if rec.route is not None:
            parts.append(a("http.route", rec.route))
        status = rec.status
        if status is not None:
            parts.append(a("http.response.status_code", status))
            if 500 <= status <= 599:
                parts.append(a("error.type", str(status)))
                span.status.code = _STATUS_ERROR
        for key, value in (
            ("client.address", rec.client_address),
            ("server.address", rec.server_address),
            ("user_agent.original", rec.user_agent),
            ("user.id", rec.user_id),
            ("app.id", rec.app_id),
        ):
            if value is not None:
                parts.append(a(key, value))
        if rec.body_bytes_sent is not None:
            parts.append(a("http.response.body.size", rec.body_bytes_sent))
        parts.append(a("audit.valid", not rec.violations))
        if rec.violations:
            parts.append(a("audit.violations", tuple(rec.violations)))
        if rec.truncation_reasons:
            parts.append(a("audit.truncated", True))
            parts.append(a("audit.truncation.reason", ",".join(rec.truncation_reasons)))
        if rec.flags:
            parts.append(a("audit.flags", tuple(rec.flags)))
        if rec.trace_id_generated:
            parts.append(a("audit.trace_id.generated", True))
        span.MergeFromString(b"".join(parts))
        return span
