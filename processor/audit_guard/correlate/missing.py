"""The Nginx side of request-level reconciliation (audit_guard.correlate.reconcile): which
requests expect an app audit record, what is kept of each (packed), and the synthetic
`missing_record` spans of those whose app record never came.

An audited, proxied request expects one when it has a request id to join on and the app
answered it: an empty upstream_status means nginx answered itself, and 0 bytes received from the
upstream means the connection failed before the app said anything.

Memory: what is kept of a request is a packed bytes value (≤ 300 bytes with the path cut to
MAX_PATH_BYTES: parent span id, request end, status, method NUL path), which the reconciler
prefixes with its state and deadline.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b
from itertools import compress

from .. import flags
from ..record import RecordBatch, row_getter

MAX_PATH_BYTES = 96  # the path is only for the synthetic span's name; its trace has the rest
# parent span id, request end, status | method NUL path
_REQUEST = struct.Struct("<8sqH")


def missing_span_id(trace_id: bytes) -> bytes:
    """Span id of the synthetic `missing_record` span of a request (replay uses it too)."""
    return blake2b(trace_id + b"missing:app", digest_size=8).digest()


def _last(value: object) -> str:
    """The last attempt's value of an upstream_* list ("502, 200" → "200"); "" (nothing) for
    an object or array, as _status_answered takes it: never str() of one, which a deeply
    nested one makes exhaust the recursion limit."""
    if not isinstance(value, str | int | float):
        return ""
    return str(value).rpartition(" ")[2]


def _status_answered(status: object) -> bool:
    """Empty upstream_status = nginx answered itself (no app record expected). A log format
    without upstream_status (None): assume the request was proxied."""
    return status is None or (isinstance(status, str | int) and _last(status) not in ("", "-"))


def _bytes_answered(received: object) -> bool:
    """0 bytes received from the upstream = the connection failed before the app said
    anything. Not logged (None): assume it answered."""
    return received is None or _last(received) not in ("", "-", "0")


def expected_app_records(batch: RecordBatch, audited: Callable[[str], object]) -> list[int]:
    """Rows of a checked Nginx batch for which an app audit record is expected: an audited path,
    a request id to join on, and a request the app answered (see the two rules above)."""
    paths = batch.path
    audited_paths = {p for p in set(paths) if p is not None and audited(p)}
    if not audited_paths:
        return []
    rows = list(compress(range(len(paths)), map(audited_paths.__contains__, paths)))
    if True in batch.trace_id_generated:
        generated = batch.trace_id_generated
        rows = [i for i in rows if not generated[i]]
    if not rows:
        return []
    statuses = batch.field_column("upstream_status")
    received = batch.field_column("upstream_bytes_received")
    if len(rows) != len(paths):
        statuses = list(map(statuses.__getitem__, rows))
        received = list(map(received.__getitem__, rows))
    # Both take few distinct values: decide per distinct value, visit rows only if one fails.
    try:
        bad_status = {v for v in set(statuses) if not _status_answered(v)}
        bad_received = {v for v in set(received) if not _bytes_answered(v)}
    except TypeError:  # an unhashable (mapped) value: decide row by row
        bad_status = bad_received = None
    if bad_status is not None and not bad_status and not bad_received:
        return rows
    keep = [_status_answered(st) and _bytes_answered(rb)
            for st, rb in zip(statuses, received, strict=True)]
    return list(compress(rows, keep))


def expectations(batch: RecordBatch, rows: list[int]) -> list[tuple[bytes, bytes]]:
    """(trace id, packed request) for the given rows: what the missing span will need.

    Never raises on odd values: a status or time the packed layout cannot hold (the sources
    range-check them, but a record may come from elsewhere) is packed as 0 (unknown), and the
    method is cut on a UTF-8 boundary without NUL (the method/path separator)."""
    if not rows:
        return []
    pick = row_getter(rows, len(batch))  # ascending; usually every row: the columns as they are
    statuses = [s if s is not None and 0 <= s <= 0xFFFF else 0 for s in pick(batch.status)]
    ends = [t if t is not None and 0 <= t < 1 << 63 else 0 for t in pick(batch.time_unix_nano)]
    heads = map(_REQUEST.pack, pick(batch.span_id), ends, statuses)
    names = dict.fromkeys(zip(pick(batch.method), pick(batch.path), strict=True))
    for method, path in names:
        head = (method or "HTTP").encode("utf-8", "replace").replace(b"\0", b"")
        # 16 bytes, the last character whole (a cut one is dropped): unpack_due decodes it strictly.
        head = head[:16].decode("utf-8", "ignore").encode()
        names[(method, path)] = (head + b"\0"
                                 + (path or "").encode("utf-8", "replace")[:MAX_PATH_BYTES])
    tails = map(names.__getitem__, zip(pick(batch.method), pick(batch.path), strict=True))
    return list(zip(pick(batch.trace_id), map(bytes.__add__, heads, tails), strict=True))


@dataclass(frozen=True, slots=True)
class Due:
    """A request whose app record did not come within the window."""

    trace_id: bytes
    parent_span_id: bytes
    end_unix_nano: int
    status: int
    method: str
    path: str


def unpack_due(trace_id: bytes, request: bytes) -> Due:
    """The Due of a request packed by `expectations`."""
    span_id, end, status = _REQUEST.unpack_from(request)
    method, _, path = request[_REQUEST.size:].partition(b"\0")
    return Due(trace_id, span_id, end, status, method.decode(), path.decode("utf-8", "replace"))


def missing_spans_batch(due: list[Due], window_s: float) -> RecordBatch:
    """Synthetic app records for requests with no app audit record: children of the Nginx span,
    flagged missing_record, `audit.missing=true` (the span builder gives them status Error)."""
    n = len(due)
    batch = RecordBatch(
        "app", n,
        time_unix_nano=[d.end_unix_nano or None for d in due],
        method=[d.method for d in due],
        path=[d.path or None for d in due],
        status=[d.status or None for d in due],
        name=[f"missing app audit record: {d.method} {d.path}" for d in due],
        attributes=[{"audit.missing": True, "audit.reconcile.window_s": window_s}
                    for _ in due],
        trace_id=[d.trace_id for d in due],
        span_id=[missing_span_id(d.trace_id) for d in due],
        parent_span_id=[d.parent_span_id for d in due],
    )
    for i in range(n):
        batch.flags[i] = [flags.MISSING_RECORD]
    return batch
