"""Exported spans read back for `audit-guard verify`: from a file of OTLP JSON (the collector's
`file` exporter: one ExportTraceServiceRequest per line) and from Jaeger's query API
(`/api/v3/traces`, OTLP JSON as well).

Each span becomes a `ReadSpan`: what the verifier needs (ids, chain and digest attributes) and
its chain `content`, rebuilt as audit_guard.integrity.encoding defines it, straight from the
JSON (no protobuf message per span: attribute encodings repeat and are cached, ~10 µs a span).
"""

from __future__ import annotations

import base64
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

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ..span_encoding import END_TAG, START_TAG, AttrValue, encode_attribute
from .encoding import BACKEND_KEYS, CHAIN_KEYS, builder_rank

__all__ = ["JaegerLookup", "ReadSpan", "ReaderError", "read_jaeger", "read_otlp_json",
           "spans_of_request"]

_KINDS = {name: number for number, name in enumerate(
    ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
     "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"))}
_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
# Jaeger's warning on a span whose end was not after its start (it adds 1 ns to the end).
_SANITIZED = "Negative duration detected, sanitizing end timestamp"
class ReaderError(Exception):
    """The input cannot be read (usage error: exit 2); the message says which and why."""


@dataclass(slots=True)
class ReadSpan:
    where: str  # "file.json line 12" / "jaeger trace <id>": for the report
    service: str
    trace_id: str  # hex
    span_id: str  # hex
    name: str
    start_ns: int
    attrs: dict[str, AttrValue | None]
    digest: bytes  # SHA-256 of what the chain hashes (its content)


def _id(value: str | None) -> bytes:
    if not value:
        return b""
    try:
        return bytes.fromhex(value)
    except ValueError:
        return base64.b64decode(value)


def _value(v: dict[str, Any] | None) -> AttrValue | None:
    if not v:
        return None
    if "stringValue" in v:
        return str(v["stringValue"])
    if "intValue" in v:
        return int(v["intValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return tuple(_value(x) for x in (v["arrayValue"].get("values") or []))  # type: ignore[misc]
    return json.dumps(v, sort_keys=True)  # bytes/kvlist: never written by audit-guard


def _any(value: AttrValue | None) -> AnyValue:
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, tuple):
        return AnyValue(array_value=ArrayValue(values=[_any(x) for x in value]))
    return AnyValue(string_value=value)


class _Encoder:
    """JSON span → chain content, with the attribute encodings cached."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, Any], bytes] = {}
        # The attribute keys as read → those hashed, in the builder's order (key sets repeat).
        self._orders: dict[tuple[str, ...], list[str]] = {}
        self._kinds: dict[Any, bytes] = {}
        self._names: dict[str, bytes] = {}

    def attribute(self, key: str, value: AttrValue | None) -> bytes:
        cache_key = (key, value.__class__, value)
        blob = self._cache.get(cache_key)
        if blob is None:
            if value is None or isinstance(value, tuple | float | bool) or not isinstance(
                    value, str | int):
                blob = Span(attributes=[KeyValue(key=key, value=_any(value))]
                            ).SerializeToString()
            else:
                blob = encode_attribute(key, value)
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[cache_key] = blob
        return blob

    def _order(self, keys: tuple[str, ...]) -> list[str]:
        order = self._orders.get(keys)
        if order is None:
            order = self._orders[keys] = [
                k for k in sorted(keys, key=builder_rank)
                if k not in CHAIN_KEYS and k not in BACKEND_KEYS and not k.startswith("@jaeger@")]
        return order

    def _head(self, trace_id: str, span_id: str, parent: str | None, name: str) -> bytes:
        """Ids and name as the stubs encode them; hex ids of the usual sizes framed by hand."""
        if len(trace_id) == 32 and len(span_id) == 16 and (not parent or len(parent) == 16):
            try:
                head = b"\x0a\x10" + bytes.fromhex(trace_id) + b"\x12\x08" + bytes.fromhex(span_id)
                if parent:
                    head += b"\x22\x08" + bytes.fromhex(parent)
            except ValueError:  # not hex: base64 ids, through the stubs
                pass
            else:
                blob = self._names.get(name)
                if blob is None:
                    blob = Span(name=name).SerializeToString()
                    if len(self._names) < 100_000:
                        self._names[name] = blob
                return head + blob
        return Span(trace_id=_id(trace_id), span_id=_id(span_id), parent_span_id=_id(parent),
                    name=name).SerializeToString()

    def _kind(self, kind: Any) -> bytes:
        blob = self._kinds.get(kind)
        if blob is None:
            number = _KINDS.get(kind, 0) if isinstance(kind, str) else int(kind)
            blob = self._kinds[kind] = Span(kind=number).SerializeToString() + START_TAG
        return blob

    def span(self, raw: dict[str, Any], service: str, where: str) -> ReadSpan:
        trace_id, span_id = raw.get("traceId") or "", raw.get("spanId") or ""
        parent = raw.get("parentSpanId")
        name = raw.get("name", "")
        parts = [self._head(trace_id, span_id, parent, name)]
        start, end = int(raw.get("startTimeUnixNano", 0)), int(raw.get("endTimeUnixNano", 0))
        attrs: dict[str, AttrValue | None] = {}
        for kv in raw.get("attributes") or ():
            try:  # the usual case, inline
                attrs[kv["key"]] = kv["value"]["stringValue"]
            except KeyError:
                attrs[kv["key"]] = _value(kv.get("value"))
        if end == start + 1 and _SANITIZED in str(attrs.get("@jaeger@warnings")):
            end = start  # Jaeger moves a zero-duration span's end 1 ns on (and says so)
        parts.append(self._kind(raw.get("kind", 0)) + start.to_bytes(8, "little") + END_TAG
                     + end.to_bytes(8, "little"))
        attribute = self.attribute
        parts += [attribute(key, attrs[key]) for key in self._order(tuple(attrs))]
        if "events" in raw or "status" in raw:
            parts.append(_tail(raw))
        return ReadSpan(where, service, trace_id.lower(), span_id.lower(), name, start, attrs,
                        sha256(b"".join(parts)).digest())


def _tail(raw: dict[str, Any]) -> bytes:
    """Events and status, as the stubs encode them (rare: built without a cache)."""
    events, status = raw.get("events"), raw.get("status") or {}
    code = status.get("code", 0)
    code = _CODES.get(code, 0) if isinstance(code, str) else int(code)
    if not events and not code and not status.get("message"):
        return b""
    span = Span(events=[
        Span.Event(time_unix_nano=int(e.get("timeUnixNano", 0)), name=e.get("name", ""),
                   attributes=[KeyValue(key=a["key"], value=_any(_value(a.get("value"))))
                               for a in sorted(e.get("attributes") or (),
                                               key=lambda a: str(a["key"]))])
        for e in events or ()])
    if code or status.get("message"):
        span.status.CopyFrom(Status(code=code, message=status.get("message", "")))  # type: ignore[arg-type]
    return span.SerializeToString()


def spans_of_request(request: dict[str, Any], where: str, encoder: _Encoder | None = None
                     ) -> Iterator[ReadSpan]:
    """The spans of one ExportTraceServiceRequest in OTLP JSON."""
    encoder = encoder or _Encoder()
    for rs in request.get("resourceSpans") or ():
        service = ""
        for kv in (rs.get("resource") or {}).get("attributes") or ():
            if kv.get("key") == "service.name":
                service = str(_value(kv.get("value")) or "")
        for ss in rs.get("scopeSpans") or ():
            for raw in ss.get("spans") or ():
                yield encoder.span(raw, service, where)


def read_otlp_json(path: Path) -> Iterator[ReadSpan]:
    """Every span of a file of OTLP JSON lines (blank lines skipped)."""
    encoder = _Encoder()
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ReaderError(f"cannot read {path}: {exc}") from None
    with f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                request = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ReaderError(f"{path} line {number}: not OTLP JSON: {exc}") from None
            yield from spans_of_request(request, f"{path.name} line {number}", encoder)


def read_jaeger(base_url: str, services: list[str] | None, since_s: float, until_s: float,
                page: int = 1000, timeout: float = 30) -> Iterator[ReadSpan]:
    """The spans of `services` (default: every service Jaeger knows) started in
    [since_s, until_s], from `/api/v3/traces`; a window that fills a page is halved."""
    base = base_url.rstrip("/")
    encoder = _Encoder()
    names = services or list((_get(f"{base}/api/services", timeout) or {}).get("data") or [])
    for service in names:
        stack = [(since_s, until_s)]
        while stack:
            lo, hi = stack.pop()
            body = _get(f"{base}/api/v3/traces?" + urllib.parse.urlencode({
                "query.service_name": service, "query.start_time_min": _rfc3339(lo),
                "query.start_time_max": _rfc3339(hi), "query.num_traces": page}), timeout)
            result = (body or {}).get("result") or {}
            traces = {s.trace_id for s in spans_of_request(result, "", encoder)}
            if len(traces) >= page and hi - lo > 0.002:
                mid = (lo + hi) / 2
                stack += [(mid, hi), (lo, mid)]
                continue
            for span in spans_of_request(result, f"jaeger {service}", encoder):
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
        self._encoder = _Encoder()

    def __call__(self, service: str, chain_id: str, seq: int) -> list[ReadSpan]:
        params = urllib.parse.urlencode({
            "service": service, "start": 1, "end": int((time.time() + 3600) * 1e6),
            "limit": 20, "tags": json.dumps({"audit.chain.id": chain_id,
                                             "audit.chain.seq": str(seq)})})
        found = (_get(f"{self._base}/api/traces?{params}", self._timeout) or {}).get("data")
        out = []
        for trace in found or ():
            body = _get(f"{self._base}/api/v3/traces/{trace['traceID']}", self._timeout)
            for span in spans_of_request((body or {}).get("result") or {}, "", self._encoder):
                if span.attrs.get("audit.chain.id") == chain_id and \
                        span.attrs.get("audit.chain.seq") == seq:
                    span.where = f"jaeger trace {span.trace_id}"
                    out.append(span)
        return out


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _get(url: str, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # Jaeger's "nothing matched"
            return None
        raise ReaderError(f"GET {url}: HTTP {exc.code}: "
                          f"{exc.read().decode(errors='replace')[:300]}") from None
    except (OSError, ValueError) as exc:
        raise ReaderError(f"GET {url}: {exc}") from None
