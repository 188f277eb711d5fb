"""Request-level reconciliation: every proxied Nginx request to an audited path must be matched
by an app audit record (same trace id) within a window.

    nginx record ──► PENDING ──(app record)──► RESOLVED (kept to the deadline, then forgotten)
                        │
                   window passes, the synthetic span is handed on
                        ▼
                     MISSING ──(app record after all)──► LATE, counted late (once)

    app record first ──► APP_FIRST (kept one window) ──(nginx record)──► RESOLVED

Not armed until the first app record: a deployment without app logs would otherwise report
every request missing. The collector reads each file on its own, so the Nginx records of the
first seconds may come in Exports before the app's: those of the last window are held in memory
(bounded by max_pending) and tracked from the arming commit on.

RESOLVED and APP_FIRST entries are tombstones: a retried or duplicated Nginx batch must not
re-open a request that was already matched, or a restart would invent a missing record.

State changes only when an Export's spans were handed on (`commit`, called before the Export is
acknowledged) and when a missing span was handed on (`declare_missing`). Each change is first
appended to a SQLite journal (WAL mode), so a crash loses nothing that was acknowledged; the
journal is folded into a snapshot every `checkpoint_interval`. After a restart every request
still PENDING gets a fresh window: the collector may hold its app record in its queue.

Memory: one dict entry per tracked request, a bytes key and a packed bytes value (≤ 300 bytes
with the path cut to MAX_PATH_BYTES); at `max_pending` entries the oldest are evicted and
counted. Entries live in two dicts kept in deadline order (insertion order): those that wait one
window (PENDING, APP_FIRST, RESOLVED) and those kept late_horizon_s (MISSING), so expiry scans
only their heads.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b
from itertools import compress, islice
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any

from .. import flags
from ..record import RecordBatch
from .state import StateStore, StateWriteError

__all__ = [
    "MAX_PATH_BYTES", "CommitResult", "Due", "RequestReconciler", "expected_app_records",
    "missing_span_id", "missing_spans_batch",
]

log = logging.getLogger(__name__)

# LATE: resolved by an app record after the request was reported missing (kept one window, so
# that the same app record, sent again, is flagged late_record again).
PENDING, RESOLVED, MISSING, APP_FIRST, LATE = 1, 2, 3, 4, 5
MAX_PATH_BYTES = 96  # the path is only for the synthetic span's name; its trace has the rest
# state, deadline | parent span id, request end, status | method NUL path
_HEAD = struct.Struct("<Bq")
_REQUEST = struct.Struct("<8sqH")
_TRACE_ID = 16
_COMMIT, _MISSING = b"C", b"M"
_RESOLVED = bytes([RESOLVED])
# The journal is folded into the snapshot every checkpoint_interval_s, or sooner when this much
# was appended (a busy server: the disk and the restart time stay bounded).
_MAX_JOURNAL_BYTES = 64 * 1024 * 1024
_U32 = struct.Struct("<I")
_ENTRY_HEAD = struct.Struct("<cqII")  # kind, now, number of expectations, number of sightings


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


_UPSTREAM_STATUS = methodcaller("get", "upstream_status")
_UPSTREAM_RECEIVED = methodcaller("get", "upstream_bytes_received")


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
    fields = batch.fields if len(rows) == len(paths) else list(map(batch.fields.__getitem__, rows))
    statuses = list(map(_UPSTREAM_STATUS, fields))
    received = list(map(_UPSTREAM_RECEIVED, fields))
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
    if len(rows) == len(batch):  # the usual case: every row expects one
        def pick(col: list[Any]) -> list[Any]:
            return col
    elif len(rows) > 1:
        pick = itemgetter(*rows)
    else:
        def pick(col: list[Any]) -> list[Any]:
            return [col[rows[0]]]
    statuses = [s if s is not None and 0 <= s <= 0xFFFF else 0 for s in pick(batch.status)]
    ends = [t if t is not None and 0 <= t < 1 << 63 else 0 for t in pick(batch.time_unix_nano)]
    heads = map(_REQUEST.pack, pick(batch.span_id), ends, statuses)
    names = dict.fromkeys(zip(pick(batch.method), pick(batch.path), strict=True))
    for method, path in names:
        head = (method or "HTTP").encode("utf-8", "replace").replace(b"\0", b"")
        # 16 bytes, the last character whole (a cut one is dropped): _due decodes it strictly.
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


def _due(trace_id: bytes, value: bytes) -> Due:
    span_id, end, status = _REQUEST.unpack_from(value, _HEAD.size)
    method, _, path = value[_HEAD.size + _REQUEST.size:].partition(b"\0")
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


@dataclass
class CommitResult:
    matched: int = 0  # app records that matched a pending request in time
    late: int = 0  # app records that resolved a request already reported missing
    evicted: int = 0  # pending requests dropped to stay within max_pending


def _encode_commit(now_ns: int, expected: list[tuple[bytes, bytes]], seen: list[bytes]) -> bytes:
    parts = [_ENTRY_HEAD.pack(_COMMIT, now_ns, len(expected), len(seen))]
    for trace_id, request in expected:
        parts += (trace_id, _U32.pack(len(request)), request)
    parts += seen
    return b"".join(parts)


def _encode_missing(now_ns: int, trace_ids: list[bytes]) -> bytes:
    return b"".join([_ENTRY_HEAD.pack(_MISSING, now_ns, len(trace_ids), 0), *trace_ids])


def _decode(entry: bytes) -> tuple[bytes, int, list[tuple[bytes, bytes]], list[bytes]]:
    kind, now_ns, n_expected, n_seen = _ENTRY_HEAD.unpack_from(entry)
    pos = _ENTRY_HEAD.size
    if kind == _MISSING:
        ids = [entry[pos + k * _TRACE_ID:pos + (k + 1) * _TRACE_ID] for k in range(n_expected)]
        return kind, now_ns, [], ids
    expected = []
    for _ in range(n_expected):
        trace_id = entry[pos:pos + _TRACE_ID]
        (size,) = _U32.unpack_from(entry, pos + _TRACE_ID)
        pos += _TRACE_ID + _U32.size
        expected.append((trace_id, entry[pos:pos + size]))
        pos += size
    seen = [entry[pos + k * _TRACE_ID:pos + (k + 1) * _TRACE_ID] for k in range(n_seen)]
    return kind, now_ns, expected, seen


class RequestReconciler:
    """Tracks audited requests until their app record comes; see the module docstring."""

    def __init__(
        self,
        *,
        window_s: float,
        late_horizon_s: float,
        max_pending: int,
        state_file: Path | None = None,
        store: StateStore | None = None,
        checkpoint_interval_s: float = 60.0,
    ) -> None:
        if late_horizon_s < window_s:
            raise ValueError("late_horizon_s must be at least window_s")
        self.window_s = window_s
        self._window = int(window_s * 1e9)
        self._horizon = int(late_horizon_s * 1e9)
        self._max = max_pending
        self._checkpoint_every = int(checkpoint_interval_s * 1e9)
        self._lock = threading.Lock()
        self._live: dict[bytes, bytes] = {}  # PENDING, APP_FIRST, RESOLVED: one window
        self._missing: dict[bytes, bytes] = {}  # MISSING: late_horizon_s
        if store is None and state_file is not None:
            store = StateStore(state_file)
        self._journal = store
        self._late_seen = False  # a LATE entry exists (or did): app records need a look
        self._last_checkpoint = 0
        self.evicted_total = 0
        # Armed by the first app record: until an app audit stream has been seen at all, Nginx
        # requests are not tracked (a deployment without app logs would otherwise report every
        # request missing). Persisted: a restart stays armed. The collector reads each file on
        # its own, so the first Nginx records may come before the first app record: those of
        # the last window are held here (memory only, bounded) and tracked once armed.
        self.armed = False
        self._unarmed: deque[tuple[int, list[tuple[bytes, bytes]]]] = deque()
        self._unarmed_count = 0
        # Over the last window of decisions: requests matched in time vs reported missing.
        self._outcomes: list[tuple[int, int, int]] = []  # (when, matched, missing)

    # -- start-up --------------------------------------------------------------------------
    def restore(self, now_ns: int) -> int:
        """Load the persisted state; every request still pending gets a fresh window (its app
        record may be waiting in the collector's queue). Returns the number of entries."""
        if self._journal is None:
            return 0
        try:
            return self._restore(now_ns)
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            with self._lock:
                self._live.clear()
                self._missing.clear()
                self.armed = False
                self._journal.set_aside(f"holds an entry that does not decode ({exc!r})")
            return 0

    def _restore(self, now_ns: int) -> int:
        assert self._journal is not None
        snapshot, journal = self._journal.load()
        with self._lock:
            pos = 1
            self.armed = bool(snapshot and snapshot[0])
            while snapshot and pos < len(snapshot):
                trace_id = snapshot[pos:pos + _TRACE_ID]
                (size,) = _U32.unpack_from(snapshot, pos + _TRACE_ID)
                pos += _TRACE_ID + _U32.size
                value = snapshot[pos:pos + size]
                (self._missing if value[0] == MISSING else self._live)[trace_id] = value
                pos += size
            for entry in journal:
                kind, when, expected, seen = _decode(entry)
                if kind == _MISSING:
                    self._apply_missing(seen, when)
                else:
                    self._apply_commit(expected, seen, when, CommitResult())
            fresh = now_ns + self._window
            for trace_id, value in self._live.items():
                if value[0] == PENDING and _HEAD.unpack_from(value)[1] < fresh:
                    self._live[trace_id] = _HEAD.pack(PENDING, fresh) + value[_HEAD.size:]
            self._late_seen = any(v[0] == LATE for v in self._live.values())
            self._live = _by_deadline(self._live)
            self._missing = _by_deadline(self._missing)
            count = len(self._live) + len(self._missing)
        self.checkpoint(now_ns, force=True)
        return count

    # -- the hot path ----------------------------------------------------------------------
    def has_missing(self) -> bool:
        return bool(self._missing) or self._late_seen

    def is_missing(self, trace_id: bytes) -> bool:
        """Whether an app record with this trace id is late: its request was reported missing
        (and the record resolves it, or already did — a resent record is flagged the same)."""
        if trace_id in self._missing:
            return True
        value = self._live.get(trace_id)
        return value is not None and value[0] == LATE

    def commit(self, expected: list[tuple[bytes, bytes]], seen: list[bytes], now_ns: int
               ) -> CommitResult:
        """An Export's findings, once its spans were handed on: Nginx requests that expect an
        app record, and the trace ids of the app records that came."""
        result = CommitResult()
        if not self.armed:
            with self._lock:
                expected = self._hold_unarmed(expected, now_ns, arming=bool(seen))
        if not seen and (not expected or not self.armed):
            return result
        with self._lock:
            if self._journal is not None:
                self._journal.append(_encode_commit(now_ns, expected, seen))
            self._apply_commit(expected, seen, now_ns, result)
            result.evicted = self._evict()
        self.checkpoint(now_ns)
        return result

    def _hold_unarmed(self, expected: list[tuple[bytes, bytes]], now_ns: int, *, arming: bool
                      ) -> list[tuple[bytes, bytes]]:
        """Before the first app record: keep the last window's expectations aside. At arming,
        returns them with this commit's own, to be tracked (and journaled) from now on."""
        held = self._unarmed
        while held and (held[0][0] < now_ns - self._window or self._unarmed_count > self._max):
            self._unarmed_count -= len(held.popleft()[1])
        if not arming:
            if expected:
                held.append((now_ns, expected))
                self._unarmed_count += len(expected)
            return []
        earlier = [pair for _, pairs in held for pair in pairs]
        held.clear()
        self._unarmed_count = 0
        return earlier + expected

    def _apply_commit(self, expected: list[tuple[bytes, bytes]], seen: list[bytes], now_ns: int,
                      result: CommitResult) -> None:
        if seen:
            self.armed = True
        if not self.armed:
            return
        live, missing = self._live, self._missing
        deadline = now_ns + self._window
        pending_head = _HEAD.pack(PENDING, deadline)
        for trace_id, request in expected:
            value = live.get(trace_id)
            if value is None:
                if trace_id not in missing:
                    live[trace_id] = pending_head + request
            elif value[0] == APP_FIRST:  # the app record came first: matched
                live[trace_id] = _RESOLVED + value[1:]  # keeps its place and deadline
                result.matched += 1
            # PENDING / RESOLVED / MISSING: a retried or duplicated Nginx record; nothing new.
        for trace_id in seen:
            value = live.get(trace_id)
            if value is None:
                if missing.pop(trace_id, None) is not None:
                    live[trace_id] = _HEAD.pack(LATE, deadline)
                    self._late_seen = True
                    result.late += 1
                else:
                    live[trace_id] = _HEAD.pack(APP_FIRST, deadline)
            elif value[0] == PENDING:
                live[trace_id] = _RESOLVED + value[1:]
                result.matched += 1
        if result.matched:
            self._outcomes.append((now_ns, result.matched, 0))

    def _evict(self) -> int:
        """Oldest first, reported-missing entries before live ones; returns the number of
        PENDING requests evicted (those can no longer be reported missing)."""
        over = len(self._live) + len(self._missing) - self._max
        evicted = 0
        for entries in (self._missing, self._live):
            if over <= 0:
                break
            victims = list(islice(entries, over))
            for trace_id in victims:
                evicted += entries.pop(trace_id)[0] == PENDING
            over -= len(victims)
        if evicted:
            self.evicted_total += evicted
            log.warning("reconcile: %d pending requests evicted to stay within max_pending=%d; "
                        "they can no longer be reported missing (raise reconcile.max_pending)",
                        evicted, self._max)
        return evicted

    # -- expiry ----------------------------------------------------------------------------
    def due(self, now_ns: int, limit: int = 4096) -> list[Due]:
        """Pending requests past their deadline (still pending until `declare_missing`); also
        forgets tombstones and missing records past theirs."""
        out: list[Due] = []
        with self._lock:
            forget: list[bytes] = []
            for trace_id, value in self._live.items():
                state, deadline = _HEAD.unpack_from(value)
                if deadline > now_ns or len(out) >= limit:
                    break
                if state == PENDING:
                    out.append(_due(trace_id, value))
                else:
                    forget.append(trace_id)
            for trace_id in forget:
                del self._live[trace_id]
            expired = []
            for trace_id, value in self._missing.items():
                if _HEAD.unpack_from(value)[1] > now_ns:
                    break
                expired.append(trace_id)
            for trace_id in expired:
                del self._missing[trace_id]
        return out

    def declare_missing(self, trace_ids: list[bytes], now_ns: int) -> int:
        """The missing spans of these requests were handed on: mark them MISSING (kept for
        late_horizon_s to recognise a late app record). Returns how many changed state."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(_encode_missing(now_ns, trace_ids))
            changed = self._apply_missing(trace_ids, now_ns)
            if changed:
                self._outcomes.append((now_ns, 0, changed))
        self.checkpoint(now_ns)
        return changed

    def _apply_missing(self, trace_ids: list[bytes], now_ns: int) -> int:
        changed = 0
        head = _HEAD.pack(MISSING, now_ns + self._horizon)
        for trace_id in trace_ids:
            value = self._live.get(trace_id)
            if value is not None and value[0] == PENDING:
                del self._live[trace_id]
                self._missing[trace_id] = head + value[_HEAD.size:]
                changed += 1
        return changed

    # -- reporting and persistence ---------------------------------------------------------
    def completeness(self, now_ns: int, span_ns: int) -> float | None:
        """Share of the requests decided over the last `span_ns` whose app record came in time
        (None when none was decided)."""
        with self._lock:
            cutoff = now_ns - span_ns
            self._outcomes = [o for o in self._outcomes if o[0] >= cutoff]
            matched = sum(o[1] for o in self._outcomes)
            missing = sum(o[2] for o in self._outcomes)
        total = matched + missing
        return matched / total if total else None

    def pending(self) -> int:
        with self._lock:
            return sum(1 for v in self._live.values() if v[0] == PENDING)

    def __len__(self) -> int:
        return len(self._live) + len(self._missing)

    def checkpoint(self, now_ns: int, force: bool = False) -> None:
        if self._journal is None:
            return
        if (not force and now_ns - self._last_checkpoint < self._checkpoint_every
                and self._journal.appended_bytes < _MAX_JOURNAL_BYTES):
            return
        with self._lock:
            parts = [b"\x01" if self.armed else b"\x00"]
            for entries in (self._live, self._missing):
                for trace_id, value in entries.items():
                    parts += (trace_id, _U32.pack(len(value)), value)
            try:
                self._journal.checkpoint(b"".join(parts), now_ns)
            except StateWriteError as exc:  # the journal still holds everything: retry later
                log.warning("%s; the journal keeps every change, retrying at the next "
                            "checkpoint", exc)
                if not force:
                    self._last_checkpoint = now_ns
                return
            self._last_checkpoint = now_ns

    def close(self, now_ns: int) -> None:
        if self._journal is not None:
            self.checkpoint(now_ns, force=True)
            self._journal.close()


def _by_deadline(entries: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return dict(sorted(entries.items(), key=lambda kv: _HEAD.unpack_from(kv[1])[1]))
