"""Joining Nginx error-log events to their access records (serve and replay alike).

A cut response often leaves its only trace in the error log: a streamed (SSE) answer whose
upstream closed early is logged 200/OK in the access log. An event joins exactly one access
record: same connection serial (`*N` = `$connection`), request method and URI, the event's
second within the request's [start, end], and of those the connection's last request
(audit_guard.correlate.errorlog_rows). A joined event adds its flag (`truncated:upstream_closed`,
`truncated:request_incomplete`) to that record; an event that means a cut but joins nothing
within the join window is reported on its own (the request may be missing from the access log)
— or, behind the collector's load_balancing (docs/scale-out.md), where every instance gets every
event but only one holds its access record, dropped and counted (`report_unjoined=False`).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict
from itertools import chain
from typing import Any, NamedTuple

import orjson

from ..record import RecordBatch
from ..sources.nginx_error import FLAG_FOR_KIND, ErrorEvent, join_key
from .errorlog_records import AMBIGUOUS, events_batch, flag_row
from .errorlog_rows import Key, Row, by_connection, choose, may_be_last, scan

__all__ = ["AMBIGUOUS", "SETTLE_NS", "Decided", "ErrorLogJoin", "events_batch"]


_NS = 1_000_000_000
# An event's request is logged in the same second as the event (nginx writes the access line
# right after the error line, from the same cached clock): access records this far past the
# event's second mean its request, if the log has it, went by already (a margin for workers
# whose clocks lag).
SETTLE_NS = 2 * _NS


class _Waiting(NamedTuple):
    """An event and what the join knows of its request."""

    event: ErrorEvent
    deadline: int  # pending: reported (alone, or under `fallback`) by then; joined: forgotten
    fallback: Row | None = None  # its likeliest request among those already handed on
    ambiguous: bool = False  # that request (or `target`'s) was one of several as likely
    target: tuple[int | None, int | None, str | None] | None = None  # joined: the row flagged


class Decided(NamedTuple):
    """An event the join is done with: under its request (`parent`: trace and span id), or on
    its own (`parent` None)."""

    event: ErrorEvent
    parent: tuple[bytes, bytes] | None
    ambiguous: bool = False


class ErrorLogJoin:
    """The join (stateful, bounded; replay drives it with the records' own times). Each event
    flags exactly one access record (audit_guard.correlate.errorlog_rows says which).

    nginx writes a cut's error line before the request's access line, and the pipeline handles
    a request's error-log records before its access records, so usually the event is pending
    when its access row comes: the row itself is flagged. When the event comes after its
    request was handed on, it waits until the access log is past the event's second (or the
    window ends) in case a later request of the connection, the one cut, is still to come;
    then it becomes a flagged child span of the request's span (`audit.late_evidence=true`).
    An event that joins nothing within the window is reported on its own.

    Retries give the same answer: an event already known (pending, or joined to a row) is not
    taken twice, and a joined event is kept one window so that its access row, sent again,
    is flagged again. Changes are undone by `rollback(savepoint())` when the spans could not be
    handed on; `dump`/`load` persist what is waiting (with the reconcile state)."""

    def __init__(self, window_ns: int, max_pending: int = 10_000, recent_batches: int = 16,
                 report_unjoined: bool = True) -> None:
        self._window = window_ns
        self._report_unjoined = report_unjoined
        # Events by outcome since start (audit_error_events_total): received, joined,
        # unjoined (reported on their own), dropped_unjoined (left to the instance that has
        # the access record). Part of the savepoint: a retried Export counts once.
        self.outcomes: Counter[str] = Counter()
        # Until then no event is given up and no joined one forgotten: set while the collector
        # sends requests again (audit_guard.completeness), when an access row comes again
        # after the window (it must be flagged again: the same span) or its first sending is
        # still queued behind the retried request.
        self.hold_until_ns = 0
        self._max_pending = max_pending
        self._pending: dict[Key, list[_Waiting]] = {}
        self._joined: dict[Key, list[_Waiting]] = {}
        self._unkeyed: list[tuple[ErrorEvent, int]] = []
        self._recent: deque[_Remembered] = deque(maxlen=recent_batches)
        self._access_clock = 0  # the latest access-record time seen
        self.evicted = 0
        self.changed = False  # what `dump` returns changed since the last `dump`

    # -- transaction -------------------------------------------------------------------------
    def savepoint(self) -> tuple[object, ...]:
        return ({k: list(v) for k, v in self._pending.items()},
                {k: list(v) for k, v in self._joined.items()},
                list(self._unkeyed), tuple(self._recent), self.evicted, self.changed,
                self._access_clock, Counter(self.outcomes))

    def rollback(self, savepoint: tuple[object, ...]) -> None:
        pending, joined, unkeyed, recent, evicted, changed, clock, outcomes = savepoint
        self._pending, self._joined = pending, joined  # type: ignore[assignment]
        self._unkeyed = unkeyed  # type: ignore[assignment]
        self._recent.clear()
        self._recent.extend(recent)  # type: ignore[arg-type]
        self.evicted, self.changed = evicted, changed  # type: ignore[assignment]
        self._access_clock = clock  # type: ignore[assignment]
        self.outcomes = outcomes  # type: ignore[assignment]

    # -- events and access rows --------------------------------------------------------------
    def on_events(self, events: Iterable[ErrorEvent], now_ns: int) -> None:
        """Take new events (those that mean a cut; others are ignored). One whose request was
        handed on already is decided by `decide`."""
        for event in events:
            if event.kind is None or FLAG_FOR_KIND.get(event.kind) is None:
                continue
            key = join_key(event)
            if key is None:
                if not any(_same(e, event) for e, _ in self._unkeyed):
                    self._unkeyed.append((event, now_ns + self._window))
                    self.outcomes["received"] += 1
                    self.changed = True
                continue
            if self._known(key, event):
                continue  # a retried error-log request: taken already
            if sum(map(len, self._pending.values())) >= self._max_pending:
                self.evicted += 1
                continue
            fallback, ambiguous = self._find_recent(key, event)
            self._pending.setdefault(key, []).append(
                _Waiting(event, now_ns + self._window, fallback, ambiguous))
            self.outcomes["received"] += 1
            self.changed = True

    def _known(self, key: Key, event: ErrorEvent) -> bool:
        return any(_same(w.event, event) for waiting in (self._pending.get(key),
                                                         self._joined.get(key))
                   for w in waiting or ())

    def on_access(self, batch: RecordBatch) -> None:
        """Flag the access rows pending (or already joined) events belong to, before the batch
        is checked."""
        self._access_clock = max(self._access_clock,
                                 max(filter(None, batch.time_unix_nano), default=0))
        if not self._pending and not self._joined:
            return
        wanted = {key[0] for key in chain(self._pending, self._joined)}
        rows = by_connection(batch.fields, wanted)
        if not rows:
            return
        for key in [k for k in self._joined if k[0] in rows]:
            for waiting in self._joined[key]:
                self._flag_again(batch, rows[key[0]], key, waiting)
        for key in [k for k in self._pending if k[0] in rows]:
            self._join_pending(batch, rows[key[0]], key)

    def _flag_again(self, batch: RecordBatch, rows: list[int], key: Key,
                    waiting: _Waiting) -> None:
        """A joined event's row sent again (a retried request): flagged as the first time."""
        if waiting.target is None:
            return  # joined under its request's span: the row itself was never flagged
        found, _ = scan(waiting.event, key, rows, batch.fields, batch.time_unix_nano,
                        batch.duration_ns, None)
        for i, row in found:
            if row.identity() == waiting.target:
                flag_row(batch, i, waiting.event, waiting.ambiguous)
                return

    def _join_pending(self, batch: RecordBatch, rows: list[int], key: Key) -> None:
        keep = []
        for waiting in self._pending[key]:
            event = waiting.event
            found, latest = scan(event, key, rows, batch.fields, batch.time_unix_nano,
                                 batch.duration_ns, None)
            fallback = waiting.fallback
            if fallback is not None and not may_be_last(fallback, latest, event):
                fallback = None  # a later request of the connection came: not the one cut
            best, ambiguous = choose([*filter(None, [fallback]), *(r for _, r in found)],
                                     latest, event)
            if best is None or best is fallback:
                keep.append(waiting._replace(fallback=fallback,
                                             ambiguous=waiting.ambiguous or ambiguous))
                continue
            i = next(i for i, row in found if row is best)
            flag_row(batch, i, event, ambiguous)
            self._joined.setdefault(key, []).append(
                waiting._replace(fallback=None, ambiguous=ambiguous, target=best.identity()))
            self.outcomes["joined"] += 1
            self.changed = True
        if keep:
            self._pending[key] = keep
        else:
            del self._pending[key]

    def remember(self, batch: RecordBatch) -> None:
        """Keep a checked access batch for events that come after it (references only)."""
        self._recent.append(_Remembered(batch.fields, batch.trace_id, batch.span_id,
                                        batch.time_unix_nano, batch.duration_ns))

    def decide(self, now_ns: int) -> list[Decided]:
        """Events the join is done with: those whose request was handed on, once the access
        log is past them or their window ended (under that request), and those whose window
        passed without one (on their own). Joined events past their window are forgotten."""
        cutoff = now_ns if now_ns >= self.hold_until_ns else -1  # deadlines past it: over
        out = [Decided(e, None) for e, deadline in self._unkeyed if deadline <= cutoff]
        if out:
            self._unkeyed = [(e, d) for e, d in self._unkeyed if d > cutoff]
        for key in list(self._pending):
            keep = []
            for waiting in self._pending[key]:
                done = self._decided(waiting, now_ns)
                if done is None:
                    keep.append(waiting)
                    continue
                out.append(done)
                if done.parent is not None:  # known, so that the line sent again is not new
                    self._joined.setdefault(key, []).append(
                        waiting._replace(fallback=None, deadline=now_ns + self._window))
            if len(keep) != len(self._pending[key]):
                self.changed = True
                if keep:
                    self._pending[key] = keep
                else:
                    del self._pending[key]
        if now_ns >= self.hold_until_ns:
            self._forget_joined(now_ns)
        self.changed |= bool(out)
        for done in out:
            self.outcomes["joined" if done.parent is not None else (
                "unjoined" if self._report_unjoined else "dropped_unjoined")] += 1
        return sorted(out, key=lambda d: (d.event.time_unix_nano or 0, d.event.line))

    def _decided(self, waiting: _Waiting, now_ns: int) -> Decided | None:
        fallback, when = waiting.fallback, waiting.event.time_unix_nano
        settled = when is not None and self._access_clock >= when + SETTLE_NS
        if fallback is not None and (settled or waiting.deadline <= now_ns):
            return Decided(waiting.event, (fallback.trace_id, fallback.span_id),
                           waiting.ambiguous)
        if waiting.deadline <= now_ns and now_ns >= self.hold_until_ns:
            return Decided(waiting.event, None)
        return None

    def _forget_joined(self, now_ns: int) -> None:
        for key in list(self._joined):
            keep = [w for w in self._joined[key] if w.deadline > now_ns]
            if len(keep) == len(self._joined[key]):
                continue
            if keep:
                self._joined[key] = keep
            else:
                del self._joined[key]
            self.changed = True

    def expired_batches(self, now_ns: int) -> list[RecordBatch]:
        """`decide` as records (source nginx_error): child spans of the requests they belong
        to, and events on their own."""
        decided = self.decide(now_ns)
        under = [d for d in decided if d.parent is not None]
        alone = [d.event for d in decided if d.parent is None and self._report_unjoined]
        out = [events_batch(alone)] if alone else []
        if under:
            out.append(events_batch([d.event for d in under],
                                    [d.parent for d in under if d.parent is not None],
                                    [d.ambiguous for d in under]))
        return out

    # -- persistence -------------------------------------------------------------------------
    def dump(self) -> bytes:
        """What is waiting (pending, unkeyed and joined events with their deadlines)."""
        self.changed = False
        rows: list[tuple[Any, ...]] = [
            (kind, asdict(w.event), w.deadline, _extra(w))
            for kind, waiting_by_key in (("p", self._pending), ("j", self._joined))
            for waiting in waiting_by_key.values() for w in waiting]
        rows += [("u", asdict(e), d) for e, d in self._unkeyed]
        return orjson.dumps(rows)

    def load(self, blob: bytes) -> int:
        """Restore what `dump` wrote (also the rows of a version without the 4th element);
        returns the number of events."""
        rows = orjson.loads(blob)
        for kind, fields, deadline, *extra in rows:
            event = ErrorEvent(**fields)
            if kind == "u":
                self._unkeyed.append((event, deadline))
                continue
            key = join_key(event)
            if key is not None:
                target = self._pending if kind == "p" else self._joined
                target.setdefault(key, []).append(
                    _from_extra(event, deadline, extra[0] if extra else {}))
        self.changed = False
        return len(rows)

    def _find_recent(self, key: Key, event: ErrorEvent) -> tuple[Row | None, bool]:
        """The event's likeliest request among the access batches handed on already."""
        found: list[Row] = []
        latest: int | None = None
        for remembered in self._recent:  # oldest first: the order they were logged
            rows = remembered.by_connection().get(key[0])
            if not rows:
                continue
            some, last = scan(event, key, rows, remembered.fields, remembered.ends,
                              remembered.durations,
                              (remembered.trace_ids, remembered.span_ids))
            found += [row for _, row in some]
            latest = last if latest is None or (last is not None and last > latest) else latest
        return choose(found, latest, event)


def _extra(waiting: _Waiting) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if waiting.fallback is not None:
        row = waiting.fallback
        out["fallback"] = [row.n, row.end, row.request_id, row.trace_id.hex(), row.span_id.hex()]
    if waiting.target is not None:
        out["target"] = list(waiting.target)
    if waiting.ambiguous:
        out["ambiguous"] = True
    return out


def _from_extra(event: ErrorEvent, deadline: int, extra: dict[str, Any]) -> _Waiting:
    fallback = extra.get("fallback")
    target = extra.get("target")
    return _Waiting(
        event, deadline,
        Row(fallback[0], fallback[1], fallback[2], bytes.fromhex(fallback[3]),
            bytes.fromhex(fallback[4])) if fallback else None,
        bool(extra.get("ambiguous")),
        (target[0], target[1], target[2]) if target else None)


def _same(a: ErrorEvent, b: ErrorEvent) -> bool:
    """The same error-log line (its position in a request does not count; its place in its
    file does, where both are known)."""
    return (a.time_unix_nano, a.pid, a.tid, a.connection, a.message, a.request_uri) == (
        b.time_unix_nano, b.pid, b.tid, b.connection, b.message, b.request_uri) and (
        a.at is None or b.at is None or a.at == b.at)


class _Remembered:
    __slots__ = ("fields", "trace_ids", "span_ids", "ends", "durations", "_index")

    def __init__(self, fields: list[dict[str, Any]], trace_ids: list[bytes],
                 span_ids: list[bytes], ends: list[int | None], durations: list[int]) -> None:
        self.fields, self.trace_ids, self.span_ids = fields, trace_ids, span_ids
        self.ends, self.durations = ends, durations
        self._index: dict[int, list[int]] | None = None

    def by_connection(self) -> dict[int, list[int]]:
        if self._index is None:  # built only when an event needs it
            self._index = by_connection(self.fields)
        return self._index
