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
journal is folded into a snapshot every `checkpoint_interval` (the entries' and the snapshot's
layout: audit_guard.correlate.reconcile_journal). After a restart every request
still PENDING gets a fresh window: the collector may hold its app record in its queue.

Memory: one dict entry per tracked request, a bytes key and a packed bytes value (≤ 300 bytes
with the path cut to MAX_PATH_BYTES: audit_guard.correlate.missing, which also says which Nginx
requests expect an app record and builds the missing spans); at `max_pending` entries the
oldest are evicted and counted. Entries live in two dicts kept in deadline order (insertion
order): those that wait one window (PENDING, APP_FIRST, RESOLVED) and those kept late_horizon_s
(MISSING), so expiry scans only their heads.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from .missing import (
    MAX_PATH_BYTES,
    Due,
    expectations,
    expected_app_records,
    missing_span_id,
    missing_spans_batch,
    unpack_due,
)
from .reconcile_journal import (
    MISSING_KIND,
    decode_entry,
    decode_snapshot,
    encode_commit,
    encode_missing,
    encode_snapshot,
)
from .state import StateStore, StateWriteError

__all__ = [
    "MAX_PATH_BYTES", "CommitResult", "Due", "RequestReconciler", "expectations",
    "expected_app_records", "missing_span_id", "missing_spans_batch",
]

log = logging.getLogger(__name__)

# LATE: resolved by an app record after the request was reported missing (kept one window, so
# that the same app record, sent again, is flagged late_record again).
PENDING, RESOLVED, MISSING, APP_FIRST, LATE = 1, 2, 3, 4, 5
# state, deadline; then the request as audit_guard.correlate.missing packs it
_HEAD = struct.Struct("<Bq")
_RESOLVED = bytes([RESOLVED])
# The journal is folded into the snapshot every checkpoint_interval_s, or sooner when this much
# was appended (a busy server: the disk and the restart time stay bounded).
_MAX_JOURNAL_BYTES = 64 * 1024 * 1024


@dataclass
class CommitResult:
    matched: int = 0  # app records that matched a pending request in time
    late: int = 0  # app records that resolved a request already reported missing
    evicted: int = 0  # pending requests dropped to stay within max_pending



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
        # the last window are held here (memory only, bounded) and tracked once armed — for one
        # window after the first Nginx record only. Later, an app audit log that starts (or is
        # switched on) arms the reconciler for what comes after: the requests before it had no
        # app record to expect, and holding them would cost every Nginx record ~1 µs forever in
        # a deployment without app logs.
        self.armed = False
        self._unarmed: deque[tuple[int, list[tuple[bytes, bytes]]]] = deque()
        self._unarmed_count = 0
        self._hold_until: int | None = None  # end of the start-up window (first Nginx + window)
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
            self.armed, entries = decode_snapshot(snapshot)
            for trace_id, value in entries:
                (self._missing if value[0] == MISSING else self._live)[trace_id] = value
            for entry in journal:
                kind, when, expected, seen = decode_entry(entry)
                if kind == MISSING_KIND:
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
                self._journal.append(encode_commit(now_ns, expected, seen))
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
            if expected and self.holding(now_ns):
                if self._hold_until is None:
                    self._hold_until = now_ns + self._window
                held.append((now_ns, expected))
                self._unarmed_count += len(expected)
            return []
        earlier = [pair for _, pairs in held for pair in pairs]
        held.clear()
        self._unarmed_count = 0
        return earlier + expected

    def holding(self, now_ns: int) -> bool:
        """Whether Nginx requests are wanted now: once armed, and before that during the
        start-up window (until one window after the first Nginx request)."""
        return self.armed or self._hold_until is None or now_ns <= self._hold_until

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
                    out.append(unpack_due(trace_id, value[_HEAD.size:]))
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

    def declare_missing(self, trace_ids: list[bytes], now_ns: int, *, outcome: bool = True
                        ) -> int:
        """The missing spans of these requests were handed on: mark them MISSING (kept for
        late_horizon_s to recognise a late app record). Returns how many changed state.
        `outcome=False`: requests kept back, not reported (a membership change's grace): they
        leave the pending set the same way but do not lower the completeness ratio."""
        with self._lock:
            if self._journal is not None:
                self._journal.append(encode_missing(now_ns, trace_ids))
            changed = self._apply_missing(trace_ids, now_ns)
            if changed and outcome:
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
            snapshot = encode_snapshot(self.armed, (self._live, self._missing))
            try:
                self._journal.checkpoint(snapshot, now_ns)
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
