"""AuditRecord → OTLP spans (OpenTelemetry HTTP semantic conventions + audit.* attributes).

Spans are assembled as serialized protobuf, not as message objects. The per-record budget is
about 10 µs; building a 15-attribute Span with the protobuf API alone costs about as much. So
every attribute key/value pair, which repeats across records (the same methods, routes, users,
apps, flags), is serialized once and the bytes cached, and a span is the concatenation of its
fields' bytes, built column by column for a whole batch. The wire encoding (tags, varints,
attribute caches) is in audit_guard.span_encoding; tests decode every result with the official
stubs.
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import sub

from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from . import __version__, flags
from .flags import MISSING_RECORD
from .record import RecordBatch
from .span_encoding import (
    DEFAULT_MAX_ATTRIBUTE_BYTES,
    END_TAG,
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    MAX_UINT64,
    PARENT_SPAN_ID_TAG,
    RESOURCE_SPANS_TAG,
    SCOPE_SPANS_TAG,
    SPAN_ID_TAG,
    START_TAG,
    STATUS_ERROR,
    TRACE_ID_TAG,
    AttrValue,
    KeyCache,
    Part,
    any_value,
    cut_utf8,
    encode_attribute,
    encode_events,
    frame_spans,
    join_rows,
    utf8,
    varint,
)

__all__ = [
    "DEFAULT_MAX_ATTRIBUTE_BYTES", "SpanBatch", "SpanBuilder", "cut_utf8", "encode_attribute",
    "varint",
]

SCOPE_NAME = "audit-guard"
# What the span says about a cut value: the attribute keys, and their lengths before the cut.
TRUNCATED_KEYS = "audit.attribute_truncated"
ORIGINAL_BYTES = "audit.attribute_original_bytes"
# Sources whose records are database statements: CLIENT spans (the app calling the database).
_CLIENT_SOURCES = frozenset({"pgaudit"})
# A row's cut attribute values: [(key, bytes before the cut)], by row.
Truncated = dict[int, list[tuple[str, int]]]


class SpanBatch:
    """Serialized spans of one resource (service), turned into an ExportTraceServiceRequest."""

    def __init__(self, service_name: str, origin: tuple[bytes, ...] = ()) -> None:
        """`origin`: serialized KeyValues the collector gave about where the records came from
        (its resource attributes, `log.file.path`), kept beside `service.name` as they came."""
        resource = Resource(
            attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service_name)),
                        *map(KeyValue.FromString, origin)]
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
        framed = frame_spans(self.spans)
        scope_size = len(self._scope) + len(framed)
        scope_head = b"".join((SCOPE_SPANS_TAG, varint(scope_size), self._scope))
        resource_size = len(self._resource) + scope_size + len(scope_head) - len(self._scope)
        return [RESOURCE_SPANS_TAG, varint(resource_size), self._resource, scope_head, framed]


class SpanBuilder:
    """One span per audit record, built column by column for a whole batch.

    Kinds: an HTTP request (nginx, or an app record that names its method) is a SERVER span; a
    database statement (pgaudit) a CLIENT span; any other app audit event an INTERNAL span.
    """

    def __init__(self, max_attribute_bytes: int = DEFAULT_MAX_ATTRIBUTE_BYTES) -> None:
        self.max_attribute_bytes = max_attribute_bytes
        self._c: dict[str, KeyCache] = {}
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

    def _cache(self, key: str) -> KeyCache:
        cache = self._c.get(key)
        if cache is None:
            cache = self._c[key] = KeyCache(key, max_bytes=self.max_attribute_bytes)
        return cache

    def _column(self, key: str, values: list[AttrValue | None],
                truncated: Truncated) -> list[bytes]:
        """Encoded attributes for a column; rows whose value was cut go into `truncated`."""
        cache = self._cache(key)
        out = cache.column(values)
        if cache.last_capped:  # rare: some value was cut
            for i, size in cache.last_capped:
                truncated.setdefault(i, []).append((key, size))
        return out

    def _truncation_column(self, batch: RecordBatch,
                           truncated: Truncated) -> list[bytes]:
        """Rows with a cut value: flagged truncated_attribute:<key>, and the span says which
        keys were cut and how long their values were (`audit.attribute_truncated`,
        `audit.attribute_original_bytes`, in the same order)."""
        out = [b""] * len(batch)
        for i, found in truncated.items():
            for key, _ in found:
                batch.add_flag(i, flags.truncated_attribute(key))
            out[i] = Span(attributes=[
                KeyValue(key=TRUNCATED_KEYS, value=any_value(tuple(k for k, _ in found))),
                KeyValue(key=ORIGINAL_BYTES, value=AnyValue(array_value=ArrayValue(
                    values=[AnyValue(int_value=size) for _, size in found]))),
            ]).SerializeToString()
        return out

    def _name_column(self, methods: list[str], routes: list[str | None]) -> list[bytes]:
        names = self._names
        try:  # every (method, route) seen before: the usual case
            return list(map(names.__getitem__, zip(methods, routes, strict=True)))
        except KeyError:
            pass
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
        raw = utf8(name)
        if len(raw) > self.max_attribute_bytes:
            raw = cut_utf8(raw, self.max_attribute_bytes)
        return Span(name=raw.decode()).SerializeToString()

    def _kinds(self, batch: RecordBatch) -> Part:
        if batch.source == "nginx":
            return KIND_SERVER
        if batch.source in _CLIENT_SOURCES:
            return KIND_CLIENT
        return [KIND_SERVER if m else KIND_INTERNAL for m in batch.method]

    def _names_of(self, batch: RecordBatch, methods: list[str | None]) -> list[bytes]:
        if batch.source != "nginx":
            methods = [m or f"{batch.source} record" for m in batch.method]
        out = self._name_column(methods, batch.route)  # type: ignore[arg-type]
        if any(batch.name):
            for i, name in enumerate(batch.name):
                if name:
                    out[i] = self._name_column([name], [None])[0]
        return out

    def _extra_attributes(self, batch: RecordBatch, truncated: Truncated
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
                for key, value in sorted(attrs.items()):  # by key: integrity.encoding
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
        """The batch's spans, serialized. Fields in field-number order, as the stubs write them
        (any order would decode, but the bytes are a contract: the same record, the same span).
        """
        if len(batch) == 0:
            return []
        # nginx: every record is an HTTP request, "HTTP" when its method is unknown.
        methods = (
            batch.method if batch.source != "nginx" or None not in batch.method
            else [m or "HTTP" for m in batch.method]
        )
        truncated: Truncated = {}
        columns = self._head_columns(batch, methods, now_ns)
        columns += self._attribute_columns(batch, methods, truncated)
        if truncated:  # before the flags are encoded: it adds truncated_attribute:<key>
            columns.append(self._truncation_column(batch, truncated))
        errors, missing = _error_rows(batch)
        if errors:
            columns.append(self._error_type_column(batch, errors, missing))
        columns += self._finding_columns(batch)
        if errors:
            status = [b""] * len(batch)
            for i in errors:
                status[i] = STATUS_ERROR
            columns.append(status)
        return join_rows(len(batch), columns)

    def _head_columns(self, batch: RecordBatch, methods: list[str | None], now_ns: int
                      ) -> list[Part]:
        """trace_id, span_id, parent_span_id, name, kind, start, end."""
        starts, ends = _span_times(batch, now_ns)
        # Ids zero-padded (or cut) to their size, as the span's fixed-size fields must be.
        columns: list[Part] = [TRACE_ID_TAG, (16, batch.trace_id), SPAN_ID_TAG,
                               (8, batch.span_id)]
        parents = batch.parent_span_id
        if any(parents):
            columns.append([PARENT_SPAN_ID_TAG + p if p else b"" for p in parents])
        columns += [self._names_of(batch, methods), self._kinds(batch), START_TAG, (0, starts),
                    END_TAG, (0, ends)]
        return columns

    def _attribute_columns(self, batch: RecordBatch, methods: list[str | None],
                           truncated: Truncated) -> list[Part]:
        """The HTTP semantic-convention attributes, then the source's own (and the lag)."""
        columns: list[Part] = [self._cache("audit.source").one(batch.source)]
        for key, values in (
            ("http.request.method", methods), ("url.path", batch.path),
            ("http.route", batch.route), ("http.response.status_code", batch.status),
            ("client.address", batch.client_address), ("server.address", batch.server_address),
            ("user_agent.original", batch.user_agent), ("user.id", batch.user_id),
            ("app.id", batch.app_id), ("http.response.body.size", batch.body_bytes_sent),
        ):
            columns.append(self._column(key, values, truncated))  # type: ignore[arg-type]
        extra = self._extra_attributes(batch, truncated)
        if extra is not None:
            columns.append(extra)
        return columns

    def _error_type_column(self, batch: RecordBatch, errors: list[int], missing: list[int]
                           ) -> list[bytes]:
        error_type: list[str | None] = [None] * len(batch)
        for i in errors:
            error_type[i] = str(batch.status[i])
        for i in missing:
            error_type[i] = MISSING_RECORD
        return self._cache("error.type").column(error_type)

    def _finding_columns(self, batch: RecordBatch) -> list[list[bytes]]:
        """audit.valid and audit.violations, the truncation, audit.flags (and audit.rules), a
        generated trace id, span events: each a sparse column, there when some row has it."""
        n = len(batch)
        valid = [self._valid[True]] * n
        columns = [valid]
        if batch.violations:
            violations = [b""] * n
            cache = self._cache("audit.violations")
            for i, found in batch.violations.items():
                valid[i] = self._valid[False]
                violations[i] = cache.one(tuple(found))
            columns.append(violations)
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
                flagged[i] = blob if blob is not None else self._encode_flags(key)
            columns.append(flagged)
        if True in batch.trace_id_generated:
            columns.append([self._generated if g else b"" for g in batch.trace_id_generated])
        if any(batch.events):
            columns.append([encode_events(found, self.max_attribute_bytes) if found else b""
                            for found in batch.events])
        return columns


def _span_times(batch: RecordBatch, now_ns: int) -> tuple[list[int], list[int]]:
    """(starts, ends). Span times are unsigned 64-bit: the sources range-check times and
    durations, and this keeps any other record from raising here (no time or one out of range:
    "now"; a start after the end: no duration rather than a bad time)."""
    ends = batch.time_unix_nano
    try:
        in_range = min(ends) >= 0 and max(ends) <= MAX_UINT64  # type: ignore[type-var]
    except TypeError:  # a None among them
        in_range = False
    if not in_range:
        ends = [now_ns if e is None else e for e in ends]
        ends = [e if 0 <= e <= MAX_UINT64 else now_ns for e in ends]
    durations = batch.duration_ns
    starts = list(map(sub, ends, durations))  # type: ignore[arg-type]
    if min(starts) < 0 or min(durations) < 0:  # rare: clamp, as max(0, ·) then min(·, end)
        starts = list(map(max, starts, repeat(0)))
        if min(durations) < 0:
            starts = list(map(min, starts, ends))
    return starts, ends  # type: ignore[return-value]


def _error_rows(batch: RecordBatch) -> tuple[list[int], list[int]]:
    """(rows whose span is an error, rows of a record that never came). 5xx: error.type and
    status Error (the HTTP conventions: 4xx is not a server error); a synthetic span for a
    record that never came is an error too. Decided on the batch's distinct statuses: rows are
    only visited when a 5xx is there."""
    server_errors = {code for code in set(batch.status)
                     if code is not None and 500 <= code <= 599}
    errors = (list(compress(range(len(batch)), map(server_errors.__contains__, batch.status)))
              if server_errors else [])
    missing = [i for i, found in batch.flags.items() if MISSING_RECORD in found]
    if missing:
        errors = sorted({*errors, *missing})
    return errors, missing
