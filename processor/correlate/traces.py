"""Trace and span ids: one trace per request, the same ids every time a record is replayed.

trace_id, first that applies:
1. the request id when it is 32 hex chars — nginx's `$request_id` is 16 random bytes in hex, a
   valid W3C trace id, and the shipped nginx snippet sends it upstream as the `traceparent`;
2. the trace id of a valid `traceparent` the record carries (the span becomes its child);
3. a stable hash of any other request id (so the app's record of that request joins it);
4. a hash of the raw record, flagged `audit.trace_id.generated=true`: nothing ties this record
   to others, but replaying it still yields the same id.

The nginx SERVER span id is the first 8 bytes of the trace id when the trace id is nginx's
request id: that is the parent span id the shipped nginx snippet puts in the upstream
`traceparent`, so the app's spans become its children without any lookup.
"""

from __future__ import annotations

import re
from hashlib import blake2b

import orjson

from ..record import AuditRecord

__all__ = ["assign_ids", "parse_traceparent"]

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"\x00" * 16
_ZERO_SPAN = b"\x00" * 8


def parse_traceparent(value: str) -> tuple[bytes, bytes] | None:
    """W3C traceparent → (trace_id, parent span id); None when invalid (all-zero ids too)."""
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3))
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id


def _canonical(fields: dict[str, object]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS, default=str)


def _hash(data: bytes, size: int) -> bytes:
    digest = blake2b(data, digest_size=size).digest()
    return digest if digest != b"\x00" * size else b"\x01" * size


def assign_ids(rec: AuditRecord) -> None:
    rid = rec.request_id
    if rid is not None and len(rid) == 32 and _HEX32.fullmatch(rid):
        trace_id = bytes.fromhex(rid)
        if trace_id != _ZERO_TRACE:
            rec.trace_id = trace_id
            rec.span_id = trace_id[:8] if trace_id[:8] != _ZERO_SPAN else _hash(trace_id, 8)
            return
    parent = parse_traceparent(rec.traceparent) if rec.traceparent else None
    if parent is not None:
        rec.trace_id, rec.parent_span_id = parent
    elif rid is not None:
        rec.trace_id = _hash(b"request_id:" + rid.encode(), 16)
    else:
        raw = rec.raw if isinstance(rec.raw, bytes) else None
        if raw is None:
            raw = rec.raw.encode() if isinstance(rec.raw, str) else _canonical(rec.fields)
        rec.trace_id = _hash(b"record:" + rec.source.encode() + b"\x00" + raw, 16)
        rec.trace_id_generated = True
    rec.span_id = _hash(rec.trace_id + rec.source.encode() + (rid or "").encode(), 8)
