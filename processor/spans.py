"""AuditRecord → OTLP spans (OpenTelemetry HTTP semantic conventions + audit.* attributes).

Spans are assembled as serialized protobuf, not as message objects. The per-record budget is
about 10 µs; building a 15-attribute Span with the protobuf API alone costs about as much. So:
- every attribute key/value pair repeats across records (the same methods, routes, users,
  apps, flags): it is serialized once with the protobuf stubs and the bytes are cached;
- each field's tag bytes are taken from the stubs at import time (never hand-written);
- a span is the concatenation of its fields' bytes — protobuf's defined encoding of a message
  — and spans are concatenated into ScopeSpans the same way.
The only wire-format facts used here are varint lengths and little-endian fixed64 timestamps.
Tests decode every result with the official stubs.
"""

from __future__ import annotations

from struct import Struct

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from . import __version__
from .record import AuditRecord

__all__ = ["SpanBatch", "SpanBuilder", "encode_attribute", "varint"]

SCOPE_NAME = "audit-guard"
AttrValue = str | int | bool | tuple[str, ...]
_fixed64 = Struct("<Q").pack


def varint(n: int) -> bytes:
    """Protobuf base-128 varint (lengths of embedded messages)."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(message: object, **field: object) -> bytes:
    """The tag (+ length) prefix the stubs write for one field, from a sample value."""
    blob = message(**field).SerializeToString()  # type: ignore[operator]
    (value,) = field.values()
    size = len(value) if isinstance(value, bytes) else 8
    return blob[: len(blob) - size]


_TRACE_ID = _tag(Span, trace_id=b"\x01" * 16)  # tag + length 16
_SPAN_ID = _tag(Span, span_id=b"\x01" * 8)
_PARENT_SPAN_ID = _tag(Span, parent_span_id=b"\x01" * 8)
_START = _tag(Span, start_time_unix_nano=1 << 62)  # fixed64 tag
_END = _tag(Span, end_time_unix_nano=1 << 62)
_KIND_SERVER = Span(kind=Span.SpanKind.SPAN_KIND_SERVER).SerializeToString()
_STATUS_ERROR = Span(status=Status(code=Status.StatusCode.STATUS_CODE_ERROR)).SerializeToString()
_SPANS_TAG = ScopeSpans(spans=[Span()]).SerializeToString()[:-1]  # tag of ScopeSpans.spans
_SCOPE_SPANS_TAG = ResourceSpans(scope_spans=[ScopeSpans()]).SerializeToString()[:-1]
_RESOURCE_SPANS_TAG = ExportTraceServiceRequest(
    resource_spans=[ResourceSpans()]
).SerializeToString()[:-1]


def _any_value(value: AttrValue) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, tuple):
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
    return AnyValue(string_value=value)


def encode_attribute(key: str, value: AttrValue) -> bytes:
    """One attribute as the bytes of a Span holding only it (concatenable into any Span)."""
    return Span(attributes=[KeyValue(key=key, value=_any_value(value))]).SerializeToString()


class _KeyCache:
    """value → encoded attribute, for one attribute key; bounded (cleared when full)."""

    __slots__ = ("key", "values", "max")

    def __init__(self, key: str, max_entries: int = 50_000) -> None:
        self.key = key
        self.values: dict[AttrValue, bytes] = {}
        self.max = max_entries

    def miss(self, value: AttrValue) -> bytes:
        blob = encode_attribute(self.key, value)
        if len(self.values) >= self.max:
            self.values.clear()
        self.values[value] = blob
        return blob


class SpanBatch:
    """Serialized spans of one resource (service), turned into an ExportTraceServiceRequest."""

    def __init__(self, service_name: str) -> None:
        resource = Resource(
            attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service_name))]
        )
        scope = InstrumentationScope(name=SCOPE_NAME, version=__version__)
        self._resource = ResourceSpans(resource=resource).SerializeToString()
        self._scope = ScopeSpans(scope=scope).SerializeToString()
        self.spans: list[bytes] = []

    def __len__(self) -> int:
        return len(self.spans)

    def request_bytes(self) -> bytes:
        """The serialized ExportTraceServiceRequest (empty request when there are no spans)."""
        if not self.spans:
            return b""
        parts = [self._scope]
        for span in self.spans:
            parts += (_SPANS_TAG, varint(len(span)), span)
        scope_spans = b"".join(parts)
        resource_spans = b"".join(
            (self._resource, _SCOPE_SPANS_TAG, varint(len(scope_spans)), scope_spans)
        )
        return b"".join((_RESOURCE_SPANS_TAG, varint(len(resource_spans)), resource_spans))


class SpanBuilder:
    """One SERVER span per audited request."""

    def __init__(self) -> None:
        keys = (
            "audit.source", "http.request.method", "url.path", "http.route",
            "http.response.status_code", "error.type", "client.address", "server.address",
            "user_agent.original", "user.id", "app.id", "http.response.body.size",
            "audit.violations", "audit.truncation.reason", "audit.flags",
        )
        self._c = {key: _KeyCache(key) for key in keys}
        self._names: dict[str, bytes] = {}
        self._valid = {v: encode_attribute("audit.valid", v) for v in (True, False)}
        self._truncated = encode_attribute("audit.truncated", True)
        self._generated = encode_attribute("audit.trace_id.generated", True)

    def _name(self, name: str) -> bytes:
        blob = self._names.get(name)
        if blob is None:
            blob = Span(name=name).SerializeToString()
            if len(self._names) >= 50_000:
                self._names.clear()
            self._names[name] = blob
        return blob

    def server_span(self, rec: AuditRecord, now_ns: int) -> bytes:
        c = self._c
        method = rec.method or "HTTP"
        end = rec.time_unix_nano or now_ns
        # Fields in field-number order, as the stubs write them (any order would decode).
        parts = [_TRACE_ID, rec.trace_id, _SPAN_ID, rec.span_id]
        if rec.parent_span_id:
            parts += (_PARENT_SPAN_ID, rec.parent_span_id)
        parts += (
            self._name(f"{method} {rec.route}" if rec.route else method),
            _KIND_SERVER,
            _START, _fixed64(end - rec.duration_ns), _END, _fixed64(end),
        )
        for key, value in (
            ("audit.source", rec.source),
            ("http.request.method", method),
            ("url.path", rec.path),
            ("http.route", rec.route),
            ("http.response.status_code", rec.status),
            ("client.address", rec.client_address),
            ("server.address", rec.server_address),
            ("user_agent.original", rec.user_agent),
            ("user.id", rec.user_id),
            ("app.id", rec.app_id),
            ("http.response.body.size", rec.body_bytes_sent),
        ):
            if value is not None:
                cache = c[key]
                parts.append(cache.values.get(value) or cache.miss(value))
        status = rec.status
        error = status is not None and 500 <= status <= 599
        if error:
            cache, error_type = c["error.type"], str(status)
            parts.append(cache.values.get(error_type) or cache.miss(error_type))
        parts.append(self._valid[not rec.violations])
        if rec.violations:
            value = tuple(rec.violations)
            cache = c["audit.violations"]
            parts.append(cache.values.get(value) or cache.miss(value))
        if rec.truncation_reasons:
            parts.append(self._truncated)
            value = ",".join(rec.truncation_reasons)
            cache = c["audit.truncation.reason"]
            parts.append(cache.values.get(value) or cache.miss(value))
        if rec.flags:
            value = tuple(rec.flags)
            cache = c["audit.flags"]
            parts.append(cache.values.get(value) or cache.miss(value))
        if rec.trace_id_generated:
            parts.append(self._generated)
        if error:
            parts.append(_STATUS_ERROR)
        return b"".join(parts)
