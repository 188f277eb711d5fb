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

from itertools import chain, compress, repeat
from operator import sub
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

from . import __version__, flags
from .flags import MISSING_RECORD
from .record import RecordBatch

__all__ = [
    "DEFAULT_MAX_ATTRIBUTE_BYTES", "SpanBatch", "SpanBuilder", "cut_utf8", "encode_attribute",
    "varint",
]

SCOPE_NAME = "audit-guard"
AttrValue = str | int | float | bool | tuple[str, ...]
# A string attribute value (and a span name) is cut to this many UTF-8 bytes, so one record
# with a 10 MB path does not make a 10 MB span that no backend accepts. Settings:
# max_attribute_bytes. 8 KiB holds real URLs, user agents and SQL statements whole.
DEFAULT_MAX_ATTRIBUTE_BYTES = 8192
# What the span says about a cut value: the attribute keys, and their lengths before the cut.
TRUNCATED_KEYS = "audit.attribute_truncated"
ORIGINAL_BYTES = "audit.attribute_original_bytes"
_MIN_INT64, _MAX_INT64, _MAX_UINT64 = -(2**63), 2**63 - 1, 2**64 - 1


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


_VARINTS = {n: varint(n) for n in range(1 << 14)}  # every 1- and 2-byte length


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
_KIND_INTERNAL = Span(kind=Span.SpanKind.SPAN_KIND_INTERNAL).SerializeToString()
_KIND_CLIENT = Span(kind=Span.SpanKind.SPAN_KIND_CLIENT).SerializeToString()
# Sources whose records are database statements: CLIENT spans (the app calling the database).
_CLIENT_SOURCES = frozenset({"pgaudit"})
# trace_id + span_id, and kind + start + end, each packed by one C call per span.
_IDS = Struct(f"<{len(_TRACE_ID)}s16s{len(_SPAN_ID)}s8s").pack
_KIND_TIMES = Struct(f"<{len(_KIND_SERVER)}s{len(_START)}sQ{len(_END)}sQ").pack
assert len(_KIND_SERVER) == len(_KIND_INTERNAL) == len(_KIND_CLIENT)
_STATUS_ERROR = Span(status=Status(code=Status.StatusCode.STATUS_CODE_ERROR)).SerializeToString()
_SPANS_TAG = ScopeSpans(spans=[Span()]).SerializeToString()[:-1]  # tag of ScopeSpans.spans
_SCOPE_SPANS_TAG = ResourceSpans(scope_spans=[ScopeSpans()]).SerializeToString()[:-1]
_RESOURCE_SPANS_TAG = ExportTraceServiceRequest(
    resource_spans=[ResourceSpans()]
).SerializeToString()[:-1]


def _utf8(value: str) -> bytes:
    """UTF-8 bytes of any str: a lone surrogate (not valid UTF-8) becomes "?", not an error."""
    return value.encode() if value.isascii() else value.encode("utf-8", "replace")


def _clean(value: str) -> str:
    """`value` as a str protobuf accepts (no lone surrogates)."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode()


def cut_utf8(raw: bytes, limit: int) -> bytes:
    """At most `limit` bytes of UTF-8 `raw`, never ending inside a character."""
    if len(raw) <= limit:
        return raw
    while limit > 0 and raw[limit] & 0xC0 == 0x80:  # a continuation byte: back off
        limit -= 1
    return raw[:limit]


def _any_value(value: AttrValue) -> AnyValue:
    """Never raises: an int beyond int64 is written as its decimal string (OTLP has no wider
    integer), a str with a lone surrogate with "?" in its place."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if _MIN_INT64 <= value <= _MAX_INT64:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, tuple):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    return AnyValue(string_value=_clean(str(value)))


# Wire tags: Span.attributes (9), KeyValue.key (1) / .value (2), AnyValue.string_value (1); all
# length-delimited. Checked against the stubs' encoding by tests/test_spans.py.
_ATTRIBUTE_TAG, _KEY_TAG, _VALUE_TAG, _STRING_TAG = b"\x4a", b"\x0a", b"\x12", b"\x0a"


def encode_attribute(key: str, value: AttrValue, max_bytes: int | None = None) -> bytes:
    """One attribute as the bytes of a Span holding only it (concatenable into any Span).

    A string value (the usual case, and the one whose values rarely repeat: paths, client
    addresses) is framed by hand, ~4x faster than building the message: each new value of a
    cached column is encoded once, so that cost is paid per distinct value. Others go through
    the stubs. A lone surrogate (not valid UTF-8) is written as "?", not an error. `max_bytes`:
    a longer string value is cut to that many bytes, on a character boundary.
    """
    if value.__class__ is str:
        raw = _utf8(value)  # type: ignore[arg-type]
        if max_bytes is not None and len(raw) > max_bytes:
            raw = cut_utf8(raw, max_bytes)
        any_value = b"".join((_STRING_TAG, varint(len(raw)), raw))
        name = _utf8(key)
        kv = b"".join((_KEY_TAG, varint(len(name)), name, _VALUE_TAG, varint(len(any_value)),
                       any_value))
        return b"".join((_ATTRIBUTE_TAG, varint(len(kv)), kv))
    return Span(attributes=[KeyValue(key=key, value=_any_value(value))]).SerializeToString()


class _KeyCache:
    """value → encoded attribute, for one attribute key; None (absent) → b"". Bounded.

    A string value longer than `max_bytes` is cut when it is encoded, and never cached (the
    cache would keep the whole value alive): `last_capped` lists the (row, size before the cut)
    of such values in the last `column`/`one` call, so the builder can mark their rows. It is
    None, and costs nothing, while no value is that long."""

    __slots__ = ("key", "values", "max", "max_bytes", "last_capped")

    def __init__(self, key: str, max_entries: int = 50_000,
                 max_bytes: int = DEFAULT_MAX_ATTRIBUTE_BYTES) -> None:
        self.key = key
        self.values: dict[AttrValue | None, bytes] = {None: b""}
        self.max = max_entries
        self.max_bytes = max_bytes
        self.last_capped: list[tuple[int, int]] | None = None

    def one(self, value: AttrValue | None) -> bytes:
        """The encoded attribute for one value (sparse rows)."""
        blob = self.values.get(value)
        if blob is not None:
            self.last_capped = None
            return blob
        return self.column([value])[0]

    def column(self, values: list[AttrValue | None]) -> list[bytes]:
        """Encoded attributes for a column of values (cache lookups are one C-level map)."""
        out = list(map(self.values.get, values))
        self.last_capped = None
        if None in out:  # values not seen before
            if len(self.values) >= self.max:
                self.values.clear()
                self.values[None] = b""
            for i, blob in enumerate(out):
                if blob is None:
                    value = values[i]
                    blob = self.values.get(value)
                    if blob is None:
                        # len(str) * 4 bounds its UTF-8 size: only a long value is measured.
                        size = (len(_utf8(value))  # type: ignore[arg-type]
                                if value.__class__ is str
                                and len(value) * 4 > self.max_bytes  # type: ignore[arg-type]
                                else 0)
                        blob = encode_attribute(self.key, value,  # type: ignore[arg-type]
                                                self.max_bytes)
                        if size > self.max_bytes:
                            if self.last_capped is None:
                                self.last_capped = []
                            self.last_capped.append((i, size))
                        else:
                            self.values[value] = blob
                    out[i] = blob
        return out


def _encode_events(found: list[tuple[int, str, dict[str, str | int]]], max_bytes: int) -> bytes:
    """Span events (rare: error-log evidence), encoded by the stubs. A time a span cannot
    carry is left out (0); values are made safe as attributes are, and strings cut at
    `max_bytes` (the same text is a span attribute too, which carries the mark)."""
    def cut(value: str | int) -> str | int:
        if value.__class__ is str and len(value) * 4 > max_bytes:  # type: ignore[arg-type]
            return cut_utf8(_utf8(value), max_bytes).decode()  # type: ignore[arg-type]
        return value

    return Span(events=[
        Span.Event(time_unix_nano=when if 0 <= when <= _MAX_UINT64 else 0,
                   name=_clean(cut(name)),  # type: ignore[arg-type]
                   attributes=[KeyValue(key=_clean(k), value=_any_value(cut(v)))
                               for k, v in attrs.items()])
        for when, name, attrs in found
    ]).SerializeToString()


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
        return b"".join(self.request_parts())

    def request_parts(self) -> list[bytes]:
        """`request_bytes` as pieces to join: the caller joins the pieces of several batches
        once (one copy of the whole request instead of one per nesting level)."""
        if not self.spans:
            return []
        spans = self.spans
        sizes = list(map(len, spans))
        lengths = [v if v is not None else varint(n)
                   for v, n in zip(map(_VARINTS.get, sizes, repeat(None)), sizes, strict=True)]
        scope_size = (len(self._scope) + len(spans) * len(_SPANS_TAG) + sum(sizes)
                      + sum(map(len, lengths)))
        scope_head = b"".join((_SCOPE_SPANS_TAG, varint(scope_size), self._scope))
        resource_size = len(self._resource) + scope_size + len(scope_head) - len(self._scope)
        return [_RESOURCE_SPANS_TAG, varint(resource_size), self._resource, scope_head,
                *chain.from_iterable(zip(repeat(_SPANS_TAG), lengths, spans))]


class SpanBuilder:
    """One span per audit record, built column by column for a whole batch.

    Kinds: an HTTP request (nginx, or an app record that names its method) is a SERVER span; a
    database statement (pgaudit) a CLIENT span; any other app audit event an INTERNAL span.
    """

    def __init__(self, max_attribute_bytes: int = DEFAULT_MAX_ATTRIBUTE_BYTES) -> None:
        self.max_attribute_bytes = max_attribute_bytes
        self._c: dict[str, _KeyCache] = {}
        self._names: dict[tuple[str, str | None], bytes] = {}
        self._flags: dict[tuple[str, ...], bytes] = {}  # a record's flags → encoded attributes
        self._valid = {v: encode_attribute("audit.valid", v) for v in (True, False)}
        self._truncated = encode_attribute("audit.truncated", True)
        self._generated = encode_attribute("audit.trace_id.generated", True)

    def _encode_flags(self, found: tuple[str, ...]) -> bytes:
        """`audit.flags`, and `audit.rules` (the names of the matched rules) when any."""
        blob = encode_attribute("audit.flags", found)
        rules = tuple(name for name in map(flags.rule_name, found) if name is not None)
        if rules:
            blob += encode_attribute("audit.rules", rules)
        if len(self._flags) >= 50_000:
            self._flags.clear()
        self._flags[found] = blob
        return blob

    def _cache(self, key: str) -> _KeyCache:
        cache = self._c.get(key)
        if cache is None:
            cache = self._c[key] = _KeyCache(key, max_bytes=self.max_attribute_bytes)
        return cache

    def _column(self, key: str, values: list[AttrValue | None],
                truncated: dict[int, list[tuple[str, int]]]) -> list[bytes]:
        """Encoded attributes for a column; rows whose value was cut go into `truncated`."""
        cache = self._cache(key)
        out = cache.column(values)
        if cache.last_capped:  # rare: some value was cut
            for i, size in cache.last_capped:
                truncated.setdefault(i, []).append((key, size))
        return out

    def _truncation_column(self, batch: RecordBatch,
                           truncated: dict[int, list[tuple[str, int]]]) -> list[bytes]:
        """Rows with a cut value: flagged truncated_attribute:<key>, and the span says which
        keys were cut and how long their values were (`audit.attribute_truncated`,
        `audit.attribute_original_bytes`, in the same order)."""
        out = [b""] * len(batch)
        for i, found in truncated.items():
            for key, _ in found:
                batch.add_flag(i, flags.truncated_attribute(key))
            out[i] = Span(attributes=[
                KeyValue(key=TRUNCATED_KEYS, value=_any_value(tuple(k for k, _ in found))),
                KeyValue(key=ORIGINAL_BYTES, value=AnyValue(array_value=ArrayValue(
                    values=[AnyValue(int_value=size) for _, size in found]))),
            ]).SerializeToString()
        return out

    def _name_column(self, methods: list[str], routes: list[str | None]) -> list[bytes]:
        names = self._names
        out = list(map(names.get, zip(methods, routes, strict=True)))
        if None in out:
            if len(names) >= 50_000:
                names.clear()
            for i, blob in enumerate(out):
                if blob is None:
                    m, r = methods[i], routes[i]
                    blob = names.get((m, r))
                    if blob is None:
                        name = f"{m} {r}" if r else m
                        blob = self._encode_name(name)
                        if len(name) * 4 <= self.max_attribute_bytes:  # a cut one: not kept
                            names[(m, r)] = blob
                    out[i] = blob
        return out

    def _encode_name(self, name: str) -> bytes:
        """A span name, cut like an attribute value (it is made of attribute values, which
        carry the mark when they were cut)."""
        raw = _utf8(name)
        if len(raw) > self.max_attribute_bytes:
            raw = cut_utf8(raw, self.max_attribute_bytes)
        return Span(name=raw.decode()).SerializeToString()

    def _kinds(self, batch: RecordBatch) -> object:
        if batch.source == "nginx":
            return repeat(_KIND_SERVER)
        if batch.source in _CLIENT_SOURCES:
            return repeat(_KIND_CLIENT)
        return [_KIND_SERVER if m else _KIND_INTERNAL for m in batch.method]

    def _names_of(self, batch: RecordBatch, methods: list[str | None]) -> list[bytes]:
        if batch.source != "nginx":
            methods = [m or f"{batch.source} record" for m in batch.method]
        out = self._name_column(methods, batch.route)  # type: ignore[arg-type]
        if any(batch.name):
            for i, name in enumerate(batch.name):
                if name:
                    out[i] = self._name_column([name], [None])[0]
        return out

    def _extra_attributes(self, batch: RecordBatch, truncated: dict[int, list[tuple[str, int]]]
                          ) -> list[bytes] | None:
        """Source attributes and the ingest lag, for the rows that have them."""
        observed, ends = batch.observed_time_unix_nano, batch.time_unix_nano
        has_lag = any(observed)
        if not has_lag and not any(batch.attributes):
            return None
        out = [b""] * len(batch)
        for i, attrs in enumerate(batch.attributes):
            parts = []
            if attrs:
                for key, value in attrs.items():
                    cache = self._cache(key)
                    parts.append(cache.one(value))
                    if cache.last_capped:
                        truncated.setdefault(i, []).append((key, cache.last_capped[0][1]))
            if has_lag and observed[i] is not None and ends[i] is not None:
                lag_ms = (observed[i] - ends[i]) // 1_000_000
                parts.append(self._cache("audit.ingest_lag_ms").one(lag_ms))
            out[i] = b"".join(parts)
        return out

    def spans(self, batch: RecordBatch, now_ns: int) -> list[bytes]:
        n = len(batch)
        if n == 0:
            return []
        ends = batch.time_unix_nano
        if None in ends:
            ends = [now_ns if e is None else e for e in ends]
        # Span times are unsigned 64-bit: the sources range-check times and durations, and
        # this keeps any other record from raising here (a time out of range: "now").
        if min(ends) < 0 or max(ends) > _MAX_UINT64:
            ends = [e if 0 <= e <= _MAX_UINT64 else now_ns for e in ends]
        durations = batch.duration_ns
        starts = list(map(max, map(sub, ends, durations), repeat(0)))
        if min(durations) < 0:  # a start after the end: no duration rather than a bad time
            starts = list(map(min, starts, ends))
        parents = batch.parent_span_id
        truncated: dict[int, list[tuple[str, int]]] = {}  # row → [(key, bytes before the cut)]
        # Fields in field-number order, as the stubs write them (any order would decode).
        columns: list[object] = [
            map(_IDS, repeat(_TRACE_ID), batch.trace_id, repeat(_SPAN_ID), batch.span_id),
        ]
        if any(parents):
            columns.append([_PARENT_SPAN_ID + p if p else b"" for p in parents])
        # nginx: every record is an HTTP request, "HTTP" when its method is unknown.
        methods = (
            batch.method if batch.source != "nginx" or None not in batch.method
            else [m or "HTTP" for m in batch.method]
        )
        columns += [
            self._names_of(batch, methods),
            map(_KIND_TIMES, self._kinds(batch), repeat(_START), starts, repeat(_END), ends),
            repeat(self._cache("audit.source").one(batch.source)),
            self._column("http.request.method", methods, truncated),  # type: ignore[arg-type]
            self._column("url.path", batch.path, truncated),  # type: ignore[arg-type]
            self._column("http.route", batch.route, truncated),  # type: ignore[arg-type]
            self._column("http.response.status_code", batch.status,  # type: ignore[arg-type]
                         truncated),
            self._column("client.address", batch.client_address,  # type: ignore[arg-type]
                         truncated),
            self._column("server.address", batch.server_address,  # type: ignore[arg-type]
                         truncated),
            self._column("user_agent.original", batch.user_agent,  # type: ignore[arg-type]
                         truncated),
            self._column("user.id", batch.user_id, truncated),  # type: ignore[arg-type]
            self._column("app.id", batch.app_id, truncated),  # type: ignore[arg-type]
            self._column("http.response.body.size",  # type: ignore[arg-type]
                         batch.body_bytes_sent, truncated),
        ]
        extra = self._extra_attributes(batch, truncated)
        if extra is not None:
            columns.append(extra)
        if truncated:  # before the flags are encoded: it adds truncated_attribute:<key>
            columns.append(self._truncation_column(batch, truncated))
        # 5xx: error.type and status Error (the HTTP conventions: 4xx is not a server error).
        # A synthetic span for a record that never came is an error too.
        # Decided on the batch's distinct statuses: rows are only visited when a 5xx is there.
        server_errors = {code for code in set(batch.status)
                         if code is not None and 500 <= code <= 599}
        errors = (list(compress(range(n), map(server_errors.__contains__, batch.status)))
                  if server_errors else [])
        missing = [i for i, found in batch.flags.items() if MISSING_RECORD in found]
        if missing:
            errors = sorted({*errors, *missing})
        if errors:
            error_type: list[str | None] = [None] * n
            for i in errors:
                error_type[i] = str(batch.status[i])
            for i in missing:
                error_type[i] = MISSING_RECORD
            columns.append(self._cache("error.type").column(error_type))
        valid = [self._valid[True]] * n
        sparse: list[list[bytes]] = []
        if batch.violations:
            violations = [b""] * n
            cache = self._cache("audit.violations")
            for i, found in batch.violations.items():
                valid[i] = self._valid[False]
                violations[i] = cache.one(tuple(found))
            sparse.append(violations)
        columns.append(valid)
        columns += sparse
        if batch.truncation_reasons:
            truncated = [b""] * n
            cache = self._cache("audit.truncation.reason")
            for i, reasons in batch.truncation_reasons.items():
                truncated[i] = self._truncated + cache.one(",".join(reasons))
            columns.append(truncated)
        if batch.flags:
            flagged = [b""] * n
            encoded = self._flags
            for i, found in batch.flags.items():
                key = tuple(found)
                blob = encoded.get(key)
                if blob is None:
                    blob = self._encode_flags(key)
                flagged[i] = blob
            columns.append(flagged)
        if True in batch.trace_id_generated:
            columns.append([self._generated if g else b"" for g in batch.trace_id_generated])
        if any(batch.events):
            columns.append([_encode_events(found, self.max_attribute_bytes) if found else b""
                            for found in batch.events])
        if errors:
            status = [b""] * n
            for i in errors:
                status[i] = _STATUS_ERROR
            columns.append(status)
        # repeat() columns are endless; every other column has exactly n rows.
        return list(map(b"".join, zip(*columns, strict=False)))  # type: ignore[call-overload]
