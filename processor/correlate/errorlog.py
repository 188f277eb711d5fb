"""Joining Nginx error-log events to their access records (serve and replay alike).

A cut response often leaves its only trace in the error log: a streamed (SSE) answer whose
upstream closed early is logged 200/OK in the access log. An event joins the access record with
the same connection serial (`*N` = `$connection`), request method and URI, within a time window.
A joined event adds its flag (`truncated:upstream_closed`, `truncated:request_incomplete`) to the
access record; an event that means a cut but joins nothing is reported on its own (the request
may be missing from the access log).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import asdict
from hashlib import blake2b
from typing import Any

import orjson

from ..record import RecordBatch
from ..sources.nginx_error import FLAG_FOR_KIND, ErrorEvent, join_key

__all__ = ["ErrorLogJoin", "events_batch"]


def _access_key(fields: dict[str, Any]) -> tuple[int, str, str] | None:
    connection = fields.get("connection")
    method, uri = fields.get("request_method"), fields.get("request_uri")
    if connection is None or not method or not uri:
        return None
    try:
        return int(connection), str(method), str(uri)
    except (TypeError, ValueError):
        return None


def _joins(
    batch: RecordBatch, events: dict[tuple[int, str, str], list[ErrorEvent]], window_ns: int
) -> list[tuple[int, ErrorEvent]]:
    """(row, event) for every access row an event joins: same connection serial, method and
    URI, and times no more than the window apart (when both are known)."""
    out = []
    for i, fields in enumerate(batch.fields):
        key = _access_key(fields)
        candidates = events.get(key) if key is not None else None
        if not candidates:
            continue
        end = batch.time_unix_nano[i]
        for event in candidates:
            when = event.time_unix_nano
            if end is None or when is None or abs(when - end) <= window_ns:
                out.append((i, event))
    return out


class ErrorLogJoin:
    """The join (stateful, bounded; replay drives it with the records' own times). nginx
    writes a cut's error line before the request's access line, and the pipeline handles a
    request's error-log records before its access records, so usually the event is pending
    when its access row comes: the row itself is flagged. When the access row was already
    handed on, the event becomes a flagged child span of the request's span instead
    (`audit.late_evidence=true`).
    An event that joins nothing within the window is reported on its own.

    Retries give the same answer: an event already known (pending, or joined to a row) is not
    taken twice, and a joined event is kept one window so that its access row, sent again,
    is flagged again. Changes are undone by `rollback(savepoint())` when the spans could not be
    handed on; `dump`/`load` persist what is waiting (with the reconcile state)."""

    def __init__(self, window_ns: int, max_pending: int = 10_000, recent_batches: int = 16) -> None:
        self._window = window_ns
        self._max_pending = max_pending
        self._pending: dict[tuple[int, str, str], list[tuple[ErrorEvent, int]]] = {}
        self._joined: dict[tuple[int, str, str], list[tuple[ErrorEvent, int]]] = {}
        self._unkeyed: list[tuple[ErrorEvent, int]] = []
        self._recent: deque[_Remembered] = deque(maxlen=recent_batches)
        self.evicted = 0
        self.changed = False  # what `dump` returns changed since the last `dump`

    # -- transaction -------------------------------------------------------------------------
    def savepoint(self) -> tuple[object, ...]:
        return ({k: list(v) for k, v in self._pending.items()},
                {k: list(v) for k, v in self._joined.items()},
                list(self._unkeyed), tuple(self._recent), self.evicted, self.changed)

    def rollback(self, savepoint: tuple[object, ...]) -> None:
        pending, joined, unkeyed, recent, evicted, changed = savepoint
        self._pending, self._joined = pending, joined  # type: ignore[assignment]
        self._unkeyed = unkeyed  # type: ignore[assignment]
        self._recent.clear()
        self._recent.extend(recent)  # type: ignore[arg-type]
        self.evicted, self.changed = evicted, changed  # type: ignore[assignment]

    # -- events and access rows --------------------------------------------------------------
    def on_events(
        self, events: Iterable[ErrorEvent], now_ns: int
    ) -> list[tuple[ErrorEvent, bytes, bytes]]:
        """Take new events; return those joining an access record already handed on, with the
        record's trace and span id."""
        late = []
        for event in events:
            if event.kind is None or FLAG_FOR_KIND.get(event.kind) is None:
                continue
            key = join_key(event)
            if key is None:
                if not any(_same(e, event) for e, _ in self._unkeyed):
                    self._unkeyed.append((event, now_ns + self._window))
                    self.changed = True
                continue
            if self._known(key, event):
                continue  # a retried error-log request: taken already
            found = self._find_recent(key, event)
            if found is not None:
                late.append((event, *found))
                continue
            if sum(map(len, self._pending.values())) >= self._max_pending:
                self.evicted += 1
                continue
            self._pending.setdefault(key, []).append((event, now_ns + self._window))
            self.changed = True
        return late

    def _known(self, key: tuple[int, str, str], event: ErrorEvent) -> bool:
        return any(_same(e, event) for waiting in (self._pending.get(key), self._joined.get(key))
                   for e, _ in waiting or ())

    def on_access(self, batch: RecordBatch) -> None:
        """Flag the access rows that pending (or already joined) events join, before the batch
        is checked."""
        if not self._pending and not self._joined:
            return
        events: dict[tuple[int, str, str], list[ErrorEvent]] = {}
        for waiting in (self._joined, self._pending):
            for key, entries in waiting.items():
                events.setdefault(key, []).extend(e for e, _ in entries)
        joined = set()
        for i, event in _joins(batch, events, self._window):
            _flag_row(batch, i, event)
            joined.add(id(event))
        if not joined:
            return
        for key in list(self._pending):
            waiting = self._pending[key]
            moved = [(e, d) for e, d in waiting if id(e) in joined]
            if not moved:
                continue
            self._joined.setdefault(key, []).extend(moved)
            waiting = [(e, d) for e, d in waiting if id(e) not in joined]
            if waiting:
                self._pending[key] = waiting
            else:
                del self._pending[key]
            self.changed = True

    def remember(self, batch: RecordBatch) -> None:
        """Keep a checked access batch for events that come after it (references only)."""
        self._recent.append(_Remembered(batch.fields, batch.trace_id, batch.span_id,
                                        batch.time_unix_nano))

    def expired(self, now_ns: int) -> list[ErrorEvent]:
        """Events whose window passed without an access record: reported on their own. Joined
        events past their window are forgotten."""
        out = [e for e, deadline in self._unkeyed if deadline <= now_ns]
        if out:
            self._unkeyed = [(e, d) for e, d in self._unkeyed if d > now_ns]
        for waiting_by_key, report in ((self._pending, True), (self._joined, False)):
            for key in list(waiting_by_key):
                waiting = waiting_by_key[key]
                gone = [e for e, deadline in waiting if deadline <= now_ns]
                if not gone:
                    continue
                if report:
                    out += gone
                keep = [(e, d) for e, d in waiting if d > now_ns]
                if keep:
                    waiting_by_key[key] = keep
                else:
                    del waiting_by_key[key]
                self.changed = True
        self.changed |= bool(out)
        return sorted(out, key=lambda e: (e.time_unix_nano or 0, e.line))

    # -- persistence -------------------------------------------------------------------------
    def dump(self) -> bytes:
        """What is waiting (pending, unkeyed and joined events with their deadlines)."""
        self.changed = False
        rows = [("p", asdict(e), d) for waiting in self._pending.values() for e, d in waiting]
        rows += [("j", asdict(e), d) for waiting in self._joined.values() for e, d in waiting]
        rows += [("u", asdict(e), d) for e, d in self._unkeyed]
        return orjson.dumps(rows)

    def load(self, blob: bytes) -> int:
        """Restore what `dump` wrote; returns the number of events."""
        rows = orjson.loads(blob)
        for kind, fields, deadline in rows:
            event = ErrorEvent(**fields)
            if kind == "u":
                self._unkeyed.append((event, deadline))
                continue
            key = join_key(event)
            if key is not None:
                target = self._pending if kind == "p" else self._joined
                target.setdefault(key, []).append((event, deadline))
        self.changed = False
        return len(rows)

    def _find_recent(
        self, key: tuple[int, str, str], event: ErrorEvent
    ) -> tuple[bytes, bytes] | None:
        for remembered in reversed(self._recent):
            row = remembered.index().get(key)
            if row is None:
                continue
            end, when = remembered.ends[row], event.time_unix_nano
            if end is not None and when is not None and abs(when - end) > self._window:
                continue
            return remembered.trace_ids[row], remembered.span_ids[row]
        return None


def _same(a: ErrorEvent, b: ErrorEvent) -> bool:
    """The same error-log line (its position in a request does not count; its place in its
    file does, where both are known)."""
    return (a.time_unix_nano, a.pid, a.tid, a.connection, a.message, a.request_uri) == (
        b.time_unix_nano, b.pid, b.tid, b.connection, b.message, b.request_uri) and (
        a.at is None or b.at is None or a.at == b.at)


class _Remembered:
    __slots__ = ("fields", "trace_ids", "span_ids", "ends", "_index")

    def __init__(self, fields: list[dict[str, Any]], trace_ids: list[bytes],
                 span_ids: list[bytes], ends: list[int | None]) -> None:
        self.fields, self.trace_ids, self.span_ids, self.ends = fields, trace_ids, span_ids, ends
        self._index: dict[tuple[int, str, str], int] | None = None

    def index(self) -> dict[tuple[int, str, str], int]:
        if self._index is None:  # built only when an event needs it
            self._index = {}
            for i, fields in enumerate(self.fields):
                key = _access_key(fields)
                if key is not None:
                    self._index[key] = i
        return self._index


def _flag_row(batch: RecordBatch, i: int, event: ErrorEvent) -> None:
    reason = FLAG_FOR_KIND[event.kind or ""]
    assert reason is not None
    reasons = batch.truncation_reasons.setdefault(i, [])
    name = reason.partition(":")[2]
    if name not in reasons:
        reasons.append(name)
    attrs = dict(batch.attributes[i] or {})
    attrs["nginx.error"] = event.message
    batch.attributes[i] = attrs
    events = list(batch.events[i] or [])
    events.append(error_event(event))
    batch.events[i] = events


def error_event(event: ErrorEvent) -> tuple[int, str, dict[str, str | int]]:
    """The error-log line as a span event: when nginx wrote it, its level, its text."""
    attrs: dict[str, str | int] = {"log.severity": event.level, "message": event.message}
    if event.connection is not None:
        attrs["nginx.connection"] = event.connection
    return (event.time_unix_nano or 0, f"nginx {event.level}: {event.kind}", attrs)


def events_batch(events: list[ErrorEvent], parents: list[tuple[bytes, bytes]] | None = None
                 ) -> RecordBatch:
    """Error events as records of their own (source nginx_error) — child spans of the request
    they belong to when `parents` gives its (trace id, span id), else traces of their own."""
    n = len(events)
    batch = RecordBatch(
        "nginx_error", n,
        time_unix_nano=[e.time_unix_nano for e in events],
        method=[e.request_method for e in events],
        path=[(e.request_uri or "").partition("?")[0] or None for e in events],
        client_address=[e.client for e in events],
        server_address=[e.server for e in events],
        name=[f"nginx {e.level}: {e.kind}" for e in events],
        attributes=[{"nginx.error": e.message, "log.severity": e.level,
                     **({"nginx.connection": e.connection} if e.connection is not None else {}),
                     **({"audit.late_evidence": True} if parents else {})} for e in events],
        raw=[f"{e.line}:{e.message}" for e in events],
        events=[[error_event(e)] for e in events],
    )
    for i, event in enumerate(events):
        reason = FLAG_FOR_KIND[event.kind or ""]
        if reason is not None:
            batch.truncation_reasons[i] = [reason.partition(":")[2]]
            batch.add_flag(i, reason)
        if parents:
            trace_id, parent = parents[i]
            batch.trace_id[i] = trace_id
            batch.parent_span_id[i] = parent
            batch.span_id[i] = blake2b(trace_id + parent + event.message.encode(),
                                       digest_size=8).digest()
        else:
            ident = f"{event.connection}|{event.time_unix_nano}|{event.message}".encode()
            batch.trace_id[i] = blake2b(b"nginx_error:" + ident, digest_size=16).digest()
            batch.span_id[i] = blake2b(b"nginx_error-span:" + ident, digest_size=8).digest()
            batch.trace_id_generated[i] = True
    return batch
