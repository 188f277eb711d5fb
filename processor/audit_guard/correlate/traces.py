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
from operator import itemgetter

import orjson

from ..grammar.traceparent import ZERO_SPAN, ZERO_TRACE, parse_traceparent
from ..record import RecordBatch

__all__ = ["assign_ids", "parse_traceparent"]

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_FIRST_8 = itemgetter(slice(0, 8))  # a trace id's first 8 bytes: the span id (C-level in map)
_ZERO_TRACE, _ZERO_SPAN = ZERO_TRACE, ZERO_SPAN


def _canonical(fields: dict[str, object]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS, default=str)


def _hash(data: bytes, size: int) -> bytes:
    digest = blake2b(data, digest_size=size).digest()
    return digest if digest != b"\x00" * size else b"\x01" * size


def assign_ids(batch: RecordBatch) -> None:
    rids = batch.request_id
    # Fast path (nginx): every request id is 32 hex chars — C-level passes.
    if batch.source == "nginx" and None not in rids and set(map(len, rids)) == {32}:
        try:
            trace_ids = list(map(bytes.fromhex, rids))
        except ValueError:
            trace_ids = None
        if trace_ids is not None and set(map(len, trace_ids)) == {16}:
            span_ids = list(map(_FIRST_8, trace_ids))
            if _ZERO_TRACE not in trace_ids and _ZERO_SPAN not in span_ids:
                batch.trace_id = trace_ids
                batch.span_id = span_ids
                return
    for i in range(len(batch)):
        _assign_row(batch, i)


def _record_bytes(batch: RecordBatch, i: int) -> bytes:
    raw = batch.raw[i]
    if isinstance(raw, bytes):
        return raw
    return raw.encode() if isinstance(raw, str) else _canonical(batch.fields[i])


def _assign_row(batch: RecordBatch, i: int) -> None:
    source = batch.source
    rid = batch.request_id[i]
    trace_id = b""
    if rid is not None and len(rid) == 32 and _HEX32.fullmatch(rid):
        trace_id = bytes.fromhex(rid)
        if trace_id == _ZERO_TRACE:
            trace_id = b""
    if trace_id and source == "nginx":
        batch.trace_id[i] = trace_id
        batch.span_id[i] = trace_id[:8] if trace_id[:8] != _ZERO_SPAN else _hash(trace_id, 8)
        return
    if trace_id:
        # An app record carrying nginx's request id: nginx's SERVER span is its parent (the
        # shipped nginx snippet sends traceparent 00-$request_id-<first 16 hex>-01).
        batch.parent_span_id[i] = trace_id[:8] if trace_id[:8] != _ZERO_SPAN else b""
    else:
        traceparent = batch.traceparent[i]
        parent = parse_traceparent(traceparent) if traceparent else None
        if parent is not None:
            trace_id, batch.parent_span_id[i] = parent
        elif rid is not None:
            trace_id = _hash(b"request_id:" + rid.encode(), 16)
        else:
            trace_id = _hash(b"record:" + source.encode() + b"\x00" + _record_bytes(batch, i), 16)
            batch.trace_id_generated[i] = True
    batch.trace_id[i] = trace_id
    # A request id names one request (a second record with it is a duplicate); otherwise —
    # other sources log several records per request, and several requests can share a client's
    # trace — the span id depends on the record itself (its text).
    identity = rid.encode() if source == "nginx" and rid else _record_bytes(batch, i)
    batch.span_id[i] = _hash(trace_id + source.encode() + b"\x00" + identity, 8)
