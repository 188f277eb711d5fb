"""Exported spans read back for `audit-guard verify`: from a file of OTLP JSON (the collector's
`file` exporter: one ExportTraceServiceRequest per line) and from Jaeger's query API
(`/api/v3/traces`, OTLP JSON as well); Tempo's API is audit_guard.integrity.tempo.

Each span becomes a `ReadSpan`: what the verifier needs (ids, chain and digest attributes) and
the SHA-256 of its chain content, rebuilt as audit_guard.integrity.encoding defines it, straight
from the typed JSON (audit_guard.integrity.otlp_json; no protobuf message per span: attribute
encodings repeat and are cached). `span_content` in encoding.py is the reference the tests hold
this to, over every kind of record the builder makes.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import msgspec
import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue as PbAnyValue
from opentelemetry.proto.common.v1.common_pb2 import ArrayValue as PbArrayValue
from opentelemetry.proto.common.v1.common_pb2 import KeyValue as PbKeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

from ..span_encoding import END_TAG, START_TAG, AttrValue, encode_attribute
from .encoding import BACKEND_KEYS, CHAIN_KEYS, builder_rank
from .otlp_json import (
    AnyValue,
    JaegerResult,
    Span,
    TracesData,
    decode_traces,
    float_of,
)

__all__ = ["JaegerLookup", "ReadSpan", "ReaderError", "SpanReader", "get", "read_jaeger",
           "read_otlp_json", "span_hex", "spans_of_request", "trace_hex"]

_KINDS = {name: number for number, name in enumerate(
    ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
     "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"))}
_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
# Jaeger's warning on a span whose end was not after its start (it adds 1 ns to the end).
_SANITIZED = "Negative duration detected, sanitizing end timestamp"


class ReaderError(Exception):
    """The input cannot be read (usage error: exit 2); the message says which and why."""


class PackedIds:
    """The hex trace and span ids of a record that keeps them packed in `ids` (length of the
    trace id ‖ trace id ‖ span id: one object a record, as the verifier keeps every record)."""

    __slots__ = ()
    ids: bytes

    @property
    def trace_id(self) -> str:
        return trace_hex(self.ids)

    @property
    def span_id(self) -> str:
        return span_hex(self.ids)


@dataclass(slots=True)
class ReadSpan(PackedIds):
    where: str  # "file.json line 12" / "jaeger trace <id>": for the report
    service: str
    ids: bytes  # length of the trace id ‖ trace id ‖ span id (one object: kept per record)
    name: str
    start_ns: int
    attrs: dict[str, AttrValue | None]
    digest: bytes  # SHA-256 of what the chain hashes (its content)


def trace_hex(ids: bytes) -> str:
    return ids[1:1 + ids[0]].hex()


def span_hex(ids: bytes) -> str:
    return ids[1 + ids[0]:].hex()


def id_bytes(value: str) -> bytes:
    """An OTLP JSON id: hex (the OTLP spec, the collector, Jaeger) or base64 (Tempo's
    protobuf JSON: 16 bytes are 24 characters ending "==", 8 bytes 12 ending "=", never hex).
    An id that is neither is kept as its text: the content then cannot match (modified)."""
    if not value:
        return b""
    try:
        return bytes.fromhex(value)
    except ValueError:
        pass
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.encode()


def _value(v: AnyValue | None) -> AttrValue | None:
    if v is None:
        return None
    if v.stringValue is not None:
        return v.stringValue
    if v.intValue is not None:
        return v.intValue
    if v.boolValue is not None:
        return v.boolValue
    if v.doubleValue is not None:
        return float_of(v.doubleValue)
    if v.arrayValue is not None:
        return tuple(_value(x) for x in v.arrayValue.values)  # type: ignore[misc]
    if v.kvlistValue is not None or v.bytesValue is not None:  # never written by audit-guard
        return json.dumps({"kvlistValue": v.kvlistValue, "bytesValue": v.bytesValue},
                          sort_keys=True)
    return None


def _pb_any(value: AttrValue | None) -> PbAnyValue:
    if value is None:
        return PbAnyValue()
    if isinstance(value, bool):
        return PbAnyValue(bool_value=value)
    if isinstance(value, int):
        return PbAnyValue(int_value=value)
    if isinstance(value, float):
        return PbAnyValue(double_value=value)
    if isinstance(value, tuple):
        return PbAnyValue(array_value=PbArrayValue(values=[_pb_any(x) for x in value]))
    return PbAnyValue(string_value=value)


def _hashed(key: str) -> bool:
    """Whether the chain covers an attribute (not the chain's own, not a backend's)."""
    return key not in CHAIN_KEYS and key not in BACKEND_KEYS and not key.startswith("@jaeger@")


class SpanReader:
    """Typed OTLP JSON span → ReadSpan, with attribute encodings, key orders, kinds and names
    cached (they repeat from record to record)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, type, Any], bytes] = {}
        # The attribute keys as read → those hashed, in the builder's order (key sets repeat).
        self._orders: dict[tuple[str, ...], list[str]] = {}
        self._kinds: dict[Any, bytes] = {}
        self._names: dict[str, bytes] = {}

    def attribute(self, key: str, value: AttrValue | None) -> bytes:
        # The value's class is part of the key: True == 1 and 1.0 == 1 in a dict.
        cache_key = (key, value.__class__, value)
        blob = self._cache.get(cache_key)
        if blob is None:
            if value.__class__ is str or value.__class__ is int:
                blob = encode_attribute(key, value)  # type: ignore[arg-type]
            else:
                blob = PbSpan(attributes=[PbKeyValue(key=key, value=_pb_any(value))]
                              ).SerializeToString()
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[cache_key] = blob
        return blob

    def _order(self, keys: tuple[str, ...]) -> list[str]:
        order = self._orders.get(keys)
        if order is None:
            order = [k for k in sorted(keys, key=builder_rank) if _hashed(k)]
            if len(self._orders) < 10_000:
                self._orders[keys] = order
        return order

    def _name(self, name: str) -> bytes:
        blob = self._names.get(name)
        if blob is None:
            blob = PbSpan(name=name).SerializeToString()
            if len(self._names) < 100_000:
                self._names[name] = blob
        return blob

    def _kind(self, kind: int | str) -> bytes:
        blob = self._kinds.get(kind)
        if blob is None:
            number = _KINDS.get(kind, 0) if isinstance(kind, str) else int(kind)
            blob = PbSpan(kind=number).SerializeToString() + START_TAG
            if len(self._kinds) < 100:
                self._kinds[kind] = blob
        return blob

    def span(self, s: Span, service: str, where: str) -> ReadSpan:
        content, attrs, ids = self.content(s)
        return ReadSpan(where, service, ids, s.name, s.startTimeUnixNano, attrs,
                        sha256(content).digest())

    def content(self, s: Span) -> tuple[bytes, dict[str, AttrValue | None], bytes]:
        """The span's chain content (encoding.span_content's bytes), its attributes as read,
        and its ids (ReadSpan.ids)."""
        trace_id, span_id, parent = s.traceId, s.spanId, s.parentSpanId
        try:  # hex ids of the usual sizes (the collector's file, Jaeger), framed by hand
            if len(trace_id) != 32 or len(span_id) != 16 or (parent and len(parent) != 16):
                raise ValueError
            tid, sid = bytes.fromhex(trace_id), bytes.fromhex(span_id)
            head = b"\x0a\x10" + tid + b"\x12\x08" + sid
            if parent:
                head += b"\x22\x08" + bytes.fromhex(parent)
            ids = b"\x10" + tid + sid
        except ValueError:  # base64 (Tempo) or odd sizes: through the stubs
            tid, sid = id_bytes(trace_id), id_bytes(span_id)
            head = PbSpan(trace_id=tid, span_id=sid,
                          parent_span_id=id_bytes(parent)).SerializeToString()
            tid = tid[:255]  # (a real one is 16 bytes)
            ids = bytes((len(tid),)) + tid + sid
        attrs: dict[str, AttrValue | None] = {}
        for kv in s.attributes:
            v = kv.value
            if v is not None and v.stringValue is not None:
                attrs[kv.key] = v.stringValue
            elif v is not None and v.intValue is not None:
                attrs[kv.key] = v.intValue
            else:
                attrs[kv.key] = _value(v)
        start, end = s.startTimeUnixNano, s.endTimeUnixNano
        if end == start + 1 and _SANITIZED in str(attrs.get("@jaeger@warnings")):
            end = start  # Jaeger moves a zero-duration span's end 1 ns on (and says so)
        try:
            times = start.to_bytes(8, "little") + END_TAG + end.to_bytes(8, "little")
        except OverflowError:  # not a fixed64: no span the processor wrote (modified)
            times = f"not a time: {start} {end}".encode()
        parts = [head, self._name(s.name), self._kind(s.kind), times]
        if len(attrs) == len(s.attributes):
            keys = self._order(tuple(attrs))
            cached = self._cache.get  # inline: a method call per attribute costs ~10 %
            blobs = [cached((k, (v := attrs[k]).__class__, v)) for k in keys]
            if None in blobs:
                blobs = [b if b is not None else self.attribute(k, attrs[k])
                         for k, b in zip(keys, blobs, strict=True)]
            parts += blobs
        else:  # a key twice: never written by the builder; every copy goes into the content
            parts += [self.attribute(kv.key, _value(kv.value)) for kv in sorted(
                s.attributes, key=lambda kv: builder_rank(kv.key)) if _hashed(kv.key)]
        if s.events or s.status is not None:
            parts.append(_tail(s))
        return b"".join(parts), attrs, ids


def _tail(s: Span) -> bytes:
    """Events and status, as the stubs encode them (rare: built without a cache)."""
    status = s.status
    code = 0 if status is None else status.code
    code = _CODES.get(code, 0) if isinstance(code, str) else int(code)
    message = "" if status is None else status.message
    if not s.events and not code and not message:
        return b""
    span = PbSpan(events=[
        PbSpan.Event(time_unix_nano=e.timeUnixNano, name=e.name, attributes=[
            PbKeyValue(key=a.key, value=_pb_any(_value(a.value)))
            for a in sorted(e.attributes, key=lambda a: a.key)])
        for e in s.events])
    if code or message:
        span.status.CopyFrom(PbStatus(code=code, message=message))  # type: ignore[arg-type]
    return span.SerializeToString()


def spans_of_request(request: TracesData | dict[str, Any], where: str,
                     reader: SpanReader | None = None) -> Iterator[ReadSpan]:
    """The spans of one ExportTraceServiceRequest / TracesData (typed, or OTLP JSON dicts)."""
    if isinstance(request, dict):
        request = msgspec.convert(request, TracesData, strict=False)
    reader = reader or SpanReader()
    for rs in request.resource_spans():
        service = ""
        for kv in rs.resource.attributes if rs.resource is not None else ():
            if kv.key == "service.name":
                service = str(_value(kv.value) or "")
        for ss in rs.scopeSpans:
            for raw in ss.spans:
                yield reader.span(raw, service, where)


def read_otlp_json(path: Path) -> Iterator[ReadSpan]:
    """Every span of a file of OTLP JSON lines (blank lines skipped)."""
    reader = SpanReader()
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ReaderError(f"cannot read {path}: {exc}") from None
    with f:
        for number, line in enumerate(f, 1):
            if line.isspace():  # (not strip(): no copy of a megabyte line)
                continue
            try:
                request = decode_traces(line)
                yield from spans_of_request(request, f"{path.name} line {number}", reader)
            except ValueError as exc:  # msgspec.DecodeError, a time or number not a number
                raise ReaderError(f"{path} line {number}: not OTLP JSON: {exc}") from None


def read_jaeger(base_url: str, services: list[str] | None, since_s: float, until_s: float,
                page: int = 1000, timeout: float = 30) -> Iterator[ReadSpan]:
    """The spans of `services` (default: every service Jaeger knows) started in
    [since_s, until_s], from `/api/v3/traces`; a window that fills a page is halved."""
    base = base_url.rstrip("/")
    reader = SpanReader()
    names = services or list((_json(get(f"{base}/api/services", timeout)) or {}).get("data")
                             or [])
    for service in names:
        stack = [(since_s, until_s)]
        while stack:
            lo, hi = stack.pop()
            url = f"{base}/api/v3/traces?" + urllib.parse.urlencode({
                "query.service_name": service, "query.start_time_min": _rfc3339(lo),
                "query.start_time_max": _rfc3339(hi), "query.num_traces": page})
            result = _jaeger_result(url, timeout)
            spans = list(spans_of_request(result, "", reader))
            if len({s.trace_id for s in spans}) >= page and hi - lo > 0.002:
                mid = (lo + hi) / 2
                stack += [(mid, hi), (lo, mid)]
                continue
            for span in spans:
                if span.service == service:
                    span.where = f"jaeger trace {span.trace_id}"
                    yield span


class JaegerLookup:
    """One chain link looked up by its attributes, whatever its time: a record whose event time
    is outside the range read (a late record) is not a deleted one. Legacy tag search for the
    trace ids, then the trace in OTLP JSON from /api/v3/traces/{id}."""

    def __init__(self, base_url: str, timeout: float = 30) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._reader = SpanReader()

    def __call__(self, service: str, chain_id: str, seq: int) -> list[ReadSpan]:
        params = urllib.parse.urlencode({
            "service": service, "start": 1, "end": int((time.time() + 3600) * 1e6),
            "limit": 20, "tags": json.dumps({"audit.chain.id": chain_id,
                                             "audit.chain.seq": str(seq)})})
        found = (_json(get(f"{self._base}/api/traces?{params}", self._timeout)) or {}
                 ).get("data")
        out = []
        for trace in found or ():
            result = _jaeger_result(f"{self._base}/api/v3/traces/{trace['traceID']}",
                                    self._timeout)
            for span in spans_of_request(result, "", self._reader):
                if span.attrs.get("audit.chain.id") == chain_id and \
                        span.attrs.get("audit.chain.seq") == seq:
                    span.where = f"jaeger trace {span.trace_id}"
                    out.append(span)
        return out


def _jaeger_result(url: str, timeout: float) -> TracesData:
    body = get(url, timeout)
    if body is None:
        return TracesData()
    try:
        return decode_traces(body, JaegerResult).result or TracesData()
    except ValueError as exc:
        raise ReaderError(f"GET {url}: not Jaeger's OTLP JSON answer: {exc}") from None


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _json(body: bytes | None) -> Any:
    try:
        return None if body is None else orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReaderError(f"an answer that is not JSON: {exc}") from None


def get(url: str, timeout: float, headers: dict[str, str] | None = None) -> bytes | None:
    """The body of a GET; None on 404 (Jaeger's and Tempo's "nothing matched")."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.read()  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise ReaderError(f"GET {url}: HTTP {exc.code}: "
                          f"{exc.read().decode(errors='replace')[:300]}") from None
    except OSError as exc:
        raise ReaderError(f"GET {url}: {exc}") from None
