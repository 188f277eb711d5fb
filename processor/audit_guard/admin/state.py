"""What the admin API shows: recent flagged records, per-source status and readiness.

The OTLP server feeds it after each Export whose spans were handed on (`record`) and after each
attempt to hand spans on (`note_export`); the admin HTTP threads read it. All of it sits behind
one lock: writes are a few dict updates per batch (never per record beyond the flagged ones,
which the pipeline already caps at FLAGGED_PER_BATCH), so contention is negligible.

The ring of recent flagged records (GET /api/flags) and the audit view's window hold the same
kept entry of each record (admin.window.kept_records: its row, its text bounded), made once,
outside the lock; readers make the dicts they show from it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..correlate.membership import MembershipWatch
from ..otlp.spool import SpoolSummary
from ..telemetry import BatchStats
from .window import DEFAULT_RECORDS, DEFAULT_REQUESTS, Kept, RequestWindow, kept_records, kept_top

__all__ = ["AdminState", "Readiness", "SourceStatus"]

DEFAULT_FLAGS_BUFFER = 1000


@dataclass
class SourceStatus:
    """Running status of one source (nginx, app, pgaudit, …)."""

    records_total: int = 0
    flagged_total: int = 0  # flagged records seen (at most FLAGGED_PER_BATCH per batch)
    last_seen_unix_nano: int | None = None  # wall time the last batch was handed on
    last_flag_unix_nano: int | None = None
    last_lag_s: float | None = None  # ingest lag of the last record that had one
    lag_sum_s: float = 0.0
    lag_count: int = 0
    # From audit_guard.completeness: the share of the records that should exist which arrived
    # (nginx: against its counters; app: against audited requests), and whether the stream
    # went quiet while traffic continued. None = unknown (nothing to compare with yet).
    completeness: float | None = None
    silent: bool | None = None

    @property
    def avg_lag_s(self) -> float | None:
        return self.lag_sum_s / self.lag_count if self.lag_count else None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str  # why not ready, or "ok"
    receiver_started: bool
    last_export_ok_unix_nano: int | None
    last_export_failed_unix_nano: int | None


class AdminState:
    def __init__(
        self, flags_buffer: int = DEFAULT_FLAGS_BUFFER, requests_kept: int = DEFAULT_REQUESTS,
        records_per_request: int = DEFAULT_RECORDS, clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._flags: deque[Kept] = deque(maxlen=flags_buffer)
        # The audit view's window (audit_guard.admin.window): admin.requests_kept traces.
        self._requests = RequestWindow(requests_kept, records_per_request)
        self._sources: dict[str, SourceStatus] = {}
        self._receiver_started = False
        self._export_ok: int | None = None
        self._export_failed: int | None = None
        self._deadletter: SpoolSummary | None = None
        # The completeness stage's membership watch (serve sets it): /api/status shows it and
        # POST /api/membership-change records a change in it.
        self.membership: MembershipWatch | None = None

    @property
    def flags_buffer(self) -> int:
        return self._flags.maxlen or 0

    def now_ns(self) -> int:
        return self._clock()

    # -- writers (the OTLP server) ------------------------------------------------------------
    def mark_receiver_started(self, started: bool = True) -> None:
        with self._lock:
            self._receiver_started = started

    def record(self, stats: BatchStats, now_ns: int | None = None) -> None:
        """One Export's findings, after its spans were handed on."""
        now = self._clock() if now_ns is None else now_ns
        kept = [k for flagged in stats.flagged for k in kept_records(flagged, now)]  # unlocked
        with self._lock:
            for source, n in stats.records.items():
                status = self._source(source)
                status.records_total += n
                status.last_seen_unix_nano = now
            for source, lags in stats.lags_s.items():
                if lags:
                    status = self._source(source)
                    status.last_lag_s = lags[-1]
                    status.lag_sum_s += sum(lags)
                    status.lag_count += len(lags)
            # The ring and the window share the kept entries (their text bounded); the ring's
            # readers leave out the detail.
            self._flags.extend(kept)
            for request_record in kept:
                self._requests.add(request_record)
            for flagged in stats.flagged:
                status = self._source(str(flagged.get("source") if isinstance(flagged, dict)
                                          else flagged.source))
                status.flagged_total += len(flagged) if not isinstance(flagged, dict) else 1
                status.last_flag_unix_nano = now

    def set_completeness(self, source: str, ratio: float | None, silent: bool | None) -> None:
        """The latest completeness findings of a source (None: unknown)."""
        with self._lock:
            if ratio is None and silent is None and source not in self._sources:
                return
            status = self._source(source)
            status.completeness = ratio
            status.silent = silent

    def set_deadletter(self, summary: SpoolSummary) -> None:
        """The dead-letter spool as it is now (serve publishes it every few seconds)."""
        with self._lock:
            self._deadletter = summary

    def note_export(self, ok: bool, now_ns: int | None = None) -> None:
        """Whether handing spans downstream just worked (ok) or ended in UNAVAILABLE."""
        now = self._clock() if now_ns is None else now_ns
        with self._lock:
            if ok:
                self._export_ok = now
            else:
                self._export_failed = now

    def _source(self, name: str) -> SourceStatus:
        status = self._sources.get(name)
        if status is None:
            status = self._sources[name] = SourceStatus()
        return status

    # -- readers (the admin API) --------------------------------------------------------------
    def flags(
        self,
        *,
        flag: str | None = None,
        source: str | None = None,
        user: str | None = None,
        since_unix_nano: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Recent flagged records, newest first. `flag` matches a flag exactly or as a prefix
        before ':' (`rule` finds every `rule:<name>`, `missing_field` every field)."""
        with self._lock:
            entries = list(self._flags)
        out: list[dict[str, Any]] = []
        for entry in map(kept_top, reversed(entries)):
            if source is not None and entry.get("source") != source:
                continue
            if user is not None and entry.get("user_id") != user:
                continue
            if since_unix_nano is not None and entry["received_unix_nano"] < since_unix_nano:
                continue
            if flag is not None and not any(
                f == flag or f.startswith(flag + ":") for f in entry.get("flags", ())
            ):
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def request(self, trace_id: str) -> list[dict[str, Any]] | None:
        """The kept records of one request (trace id, lowercase hex), oldest first; None when
        it is not (or no longer) in the audit view's window."""
        with self._lock:
            return self._requests.get(trace_id)

    @property
    def request_window(self) -> tuple[int, int]:
        """(requests kept, records kept per request): admin.requests_kept and
        admin.records_per_request."""
        return self._requests.requests, self._requests.records

    def sources(self) -> dict[str, SourceStatus]:
        """A copy of every source's status, by name."""
        with self._lock:
            return {name: SourceStatus(**vars(s)) for name, s in sorted(self._sources.items())}

    def deadletter(self) -> SpoolSummary | None:
        """The last published spool summary; None: no spool configured (or none published)."""
        with self._lock:
            return self._deadletter

    def readiness(self) -> Readiness:
        with self._lock:
            started, ok, failed = self._receiver_started, self._export_ok, self._export_failed
        if not started:
            reason = "the OTLP receiver is not started"
        elif failed is not None and (ok is None or failed > ok):
            reason = ("the last hand-off of spans downstream failed (UNAVAILABLE) and none "
                      "succeeded since; check exporter.endpoint")
        else:
            reason = "ok"
        return Readiness(reason == "ok", reason, started, ok, failed)
