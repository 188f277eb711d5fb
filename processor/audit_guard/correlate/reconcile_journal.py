"""How the request reconciler's state is written (audit_guard.correlate.reconcile): journal
entries, one per state change, and the snapshot the journal is folded into.

A journal entry is a commit (the Nginx requests that expect an app record, with their packed
requests, and the trace ids of the app records that came) or a declaration of missing records
(trace ids). The snapshot is one armed byte, then every tracked entry as trace id, length,
packed value.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

TRACE_ID_SIZE = 16
COMMIT_KIND, MISSING_KIND = b"C", b"M"
_U32 = struct.Struct("<I")
_ENTRY_HEAD = struct.Struct("<cqII")  # kind, now, number of expectations, number of sightings


def encode_commit(now_ns: int, expected: list[tuple[bytes, bytes]], seen: list[bytes]) -> bytes:
    parts = [_ENTRY_HEAD.pack(COMMIT_KIND, now_ns, len(expected), len(seen))]
    for trace_id, request in expected:
        parts += (trace_id, _U32.pack(len(request)), request)
    parts += seen
    return b"".join(parts)


def encode_missing(now_ns: int, trace_ids: list[bytes]) -> bytes:
    return b"".join([_ENTRY_HEAD.pack(MISSING_KIND, now_ns, len(trace_ids), 0), *trace_ids])


def decode_entry(entry: bytes) -> tuple[bytes, int, list[tuple[bytes, bytes]], list[bytes]]:
    """(kind, now, expected, seen); a missing entry's trace ids come as `seen`."""
    kind, now_ns, n_expected, n_seen = _ENTRY_HEAD.unpack_from(entry)
    pos = _ENTRY_HEAD.size
    if kind == MISSING_KIND:
        ids = [entry[pos + k * TRACE_ID_SIZE:pos + (k + 1) * TRACE_ID_SIZE]
               for k in range(n_expected)]
        return kind, now_ns, [], ids
    expected = []
    for _ in range(n_expected):
        trace_id = entry[pos:pos + TRACE_ID_SIZE]
        (size,) = _U32.unpack_from(entry, pos + TRACE_ID_SIZE)
        pos += TRACE_ID_SIZE + _U32.size
        expected.append((trace_id, entry[pos:pos + size]))
        pos += size
    seen = [entry[pos + k * TRACE_ID_SIZE:pos + (k + 1) * TRACE_ID_SIZE] for k in range(n_seen)]
    return kind, now_ns, expected, seen


def encode_snapshot(armed: bool, tables: Iterable[dict[bytes, bytes]]) -> bytes:
    parts = [b"\x01" if armed else b"\x00"]
    for entries in tables:
        for trace_id, value in entries.items():
            parts += (trace_id, _U32.pack(len(value)), value)
    return b"".join(parts)


def decode_snapshot(snapshot: bytes) -> tuple[bool, list[tuple[bytes, bytes]]]:
    """(armed, [(trace id, packed value)]) of a snapshot (empty: not armed, nothing kept)."""
    armed = bool(snapshot and snapshot[0])
    entries = []
    pos = 1
    while snapshot and pos < len(snapshot):
        trace_id = snapshot[pos:pos + TRACE_ID_SIZE]
        (size,) = _U32.unpack_from(snapshot, pos + TRACE_ID_SIZE)
        pos += TRACE_ID_SIZE + _U32.size
        entries.append((trace_id, snapshot[pos:pos + size]))
        pos += size
    return armed, entries
