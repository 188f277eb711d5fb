"""Replay's shell around the service's own stateful stages, driven by the records' own times.

`serve` runs the stateful stages — duplicates, the error-log join, request reconciliation — on
records as the collector delivers them, with the wall clock. Replay runs the very same stages
(the Pipeline's Deduplicator and ErrorLogJoin, a RequestReconciler built from the same settings)
over files, with an event-time clock:

- The files' records are merged in time order. Each step takes the rows of the file whose next
  row is the earliest, up to STEP_SLACK_NS past it (so that two busy files do not alternate
  row by row), ending with a whole second (all the rows of that file's second, whichever
  parsed batch of the file they are in): no stage sees a record more than STEP_SLACK_NS ahead
  of one still to come, whatever the order the files were given in.
- The error log's events go to the join one join window ahead of the access records: nginx
  writes a cut's error line just before the request's access line, and the window covers it.
- After each step the clock is the low watermark, the earliest time a record still to come can
  have. What is due by then is decided as the service decides it: requests with no app record
  in the window (`missing_record`), error events that joined no access record.
- A source that falls silent (no record for `reconcile.silence_threshold_s` while traffic went
  on: audit_guard.correlate.silence) is noted with the time it stopped and came back.
- At the end of the input everything still waiting is decided.

A row without a time takes the time of the row before it in its file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..correlate.reconcile import (
    Due,
    RequestReconciler,
    expectations,
    expected_app_records,
    missing_spans_batch,
)
from ..correlate.silence import SilenceWatch
from ..pipeline import APP, NGINX, Pipeline
from ..record import RecordBatch
from ..sources.nginx_error import FLAG_FOR_KIND, ErrorEvent

__all__ = ["STEP_SLACK_NS", "Cursor", "ReplayEngine"]

_NS = 1_000_000_000
STEP_SLACK_NS = _NS  # how far one step may run ahead of another file's next record
_END = 1 << 63  # after every record: what still waits is decided


@dataclass
class Cursor:
    """One file's parsed batches, taken a few rows at a time in time order."""

    name: str
    batches: Iterator[RecordBatch]
    batch: RecordBatch | None = None
    times: list[int] = field(default_factory=list)  # per row, a missing time filled in
    row: int = 0
    last_time: int = 0

    def head(self) -> int | None:
        """The time of the next row, None when the file is done."""
        while self.batch is None or self.row >= len(self.batch):
            self.batch = next(self.batches, None)
            if self.batch is None:
                return None
            self.row = 0
            self.times = []
            for t in self.batch.time_unix_nano:
                self.last_time = t if t is not None else self.last_time
                self.times.append(self.last_time)
        return self.times[self.row]

    def take(self, limit: int) -> RecordBatch:
        """The next rows up to time `limit` (at least one), on into the file's next parsed
        batch while its rows are still within `limit`."""
        parts = [self._take(limit)]
        while (self.batch is not None and self.row >= len(self.batch)
               and (head := self.head()) is not None and head <= limit):
            parts.append(self._take(limit))
        if len(parts) == 1:
            return parts[0]
        placed, start = [], 0
        for part in parts:
            placed.append((list(range(start, start + len(part))), part))
            start += len(part)
        return RecordBatch.scatter(parts[0].source, start, placed)

    def _take(self, limit: int) -> RecordBatch:
        assert self.batch is not None
        end = self.row + 1
        while end < len(self.batch) and self.times[end] <= limit:
            end += 1
        part = self.batch.slice(self.row, end)
        self.row = end
        return part


def replay_reconciler(settings: Settings) -> RequestReconciler:
    """Replay's request reconciler (in memory, the service's windows), handed to the pipeline
    and, through it, to the engine."""
    config = settings.reconcile
    return RequestReconciler(window_s=config.window_s, late_horizon_s=config.late_horizon_s,
                             max_pending=config.max_pending, state_file=None)


class ReplayEngine:
    """Feeds parsed batches and error events through the pipeline's stateful stages in time
    order; hands what it decides to the callbacks (replay writes them out)."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        *,
        on_batch: Callable[[RecordBatch, list[bytes]], None],
        on_missing: Callable[[RecordBatch, list[dict[str, Any]]], None],
        on_event: Callable[[ErrorEvent, tuple[bytes, bytes] | None], None],
        fields_of: Callable[[RecordBatch, int], dict[str, Any]],
        spans: bool = False,
    ) -> None:
        config = settings.reconcile
        self.pipeline = pipeline
        if pipeline.reconciler is None:
            raise ValueError("replay's pipeline needs a reconciler: build it with "
                             "replay_reconciler(settings)")
        self.reconciler = pipeline.reconciler
        self._audited = settings.audited_path_regex().match
        self._window_s = config.window_s
        self._join_window = int(settings.error_join_window_s * _NS)
        self._on_batch, self._on_missing, self._on_event = on_batch, on_missing, on_event
        self._fields_of = fields_of
        self._spans = spans
        self._requests: dict[bytes, dict[str, Any]] = {}  # expected → its Nginx fields
        self._events: list[tuple[int, int, ErrorEvent]] = []  # (time, order, event), sorted
        self.silence = SilenceWatch(int(config.silence_threshold_s * _NS))
        self._quiet: dict[str, int] = {}  # silent source → its last record before the silence
        # (source, last record before, first record after or None: until the end of input)
        self.silences: list[tuple[str, int, int | None]] = []
        self._fed = 0  # events handed to the join so far
        self.unjoined = 0  # error events reported on their own
        self.missing = 0
        self.clock = 0  # the latest record time seen

    # -- input ---------------------------------------------------------------------------------
    def add_events(self, events: list[ErrorEvent]) -> None:
        """Error-log events that mean a cut (others are ignored, as the service ignores them)."""
        for event in events:
            if event.kind is not None and FLAG_FOR_KIND.get(event.kind) is not None:
                self._events.append((event.time_unix_nano or 0, len(self._events), event))

    def run(self, cursors: list[Cursor]) -> None:
        """Every row of every file, in time order, then what still waits."""
        self._events.sort(key=lambda e: (e[0], e[1]))
        live = [c for c in cursors if c.head() is not None]
        while live:
            cursor = min(live, key=lambda c: c.head() or 0)
            # Up to the other files' next row, and never more than the slack ahead of this
            # file's own: what falls due in between is decided before later rows are seen.
            # A step ends with a whole second: the error-log join tells the requests one
            # keep-alive connection had in one second apart only when it sees all of them.
            limit = min(c.head() or 0 for c in live) + STEP_SLACK_NS
            limit -= limit % _NS + 1
            self._step(cursor.take(limit))
            live = [c for c in live if c.head() is not None]
            if live:
                self._decide(min(c.head() or 0 for c in live))
                self._watch_silence(self.clock)
        self._watch_silence(self.clock)
        for source, since in self._quiet.items():
            self.silences.append((source, since, None))
        self._feed_events(_END)
        last_event = self._events[-1][0] if self._events else 0
        # After every record and event, past every window: what still waits is decided.
        self._decide(max(self.clock, last_event) + int(self._window_s * _NS)
                     + self._join_window + _NS)

    # -- one step ------------------------------------------------------------------------------
    def _step(self, batch: RecordBatch) -> None:
        self.clock = max([self.clock, *filter(None, batch.time_unix_nano)])
        self._feed_events(self.clock + self._join_window)
        spans = self.pipeline.correlate(batch, self.clock, None, spans=self._spans)
        self._on_batch(batch, spans)
        if batch.source == NGINX:
            self._expect(batch)
        elif batch.source == APP:
            self._seen(batch)
        self.silence.on_records(batch.source, self.clock)

    def _feed_events(self, until: int) -> None:
        """Hand the join the events up to `until` (their own time is their clock)."""
        events = self._events
        while self._fed < len(events) and events[self._fed][0] <= until:
            when, _, event = events[self._fed]
            self._fed += 1
            self.pipeline.errors.on_events([event], when or self.clock)

    def _expect(self, batch: RecordBatch) -> None:
        rows = expected_app_records(batch, self._audited)
        if rows:
            self.silence.on_expected(self.clock)
        times = batch.time_unix_nano
        for i, expected in zip(rows, expectations(batch, rows), strict=True):
            self._requests.setdefault(expected[0], self._fields_of(batch, i))
            self.reconciler.commit([expected], [], times[i] or self.clock)

    def _seen(self, batch: RecordBatch) -> None:
        times = batch.time_unix_nano
        for i, (trace_id, generated) in enumerate(
                zip(batch.trace_id, batch.trace_id_generated, strict=True)):
            if not generated:
                self.reconciler.commit([], [trace_id], times[i] or self.clock)

    # -- what the clock decides ----------------------------------------------------------------
    def _decide(self, now: int) -> None:
        while True:
            due = self.reconciler.due(now)
            if not due:
                break
            self._report_missing(due, now)
        joins = self.pipeline.errors
        for event, parent, _ambiguous in joins.decide(now - 1):
            self.unjoined += parent is None
            self._on_event(event, parent)  # parent: its access record went by already

    @property
    def joined(self) -> int:
        """Error events that joined an access record (as a flag on it, or under it when it
        had gone by)."""
        return len(self._events) - self.unjoined - self.pipeline.errors.evicted

    def _watch_silence(self, now: int) -> None:
        """Note when a source falls silent (quiet past the threshold while traffic went on)
        and when it comes back."""
        for source, quiet in self.silence.silent(now).items():
            if quiet and source not in self._quiet:
                self._quiet[source] = self.silence.last_records[source]
            elif not quiet and source in self._quiet:
                self.silences.append((source, self._quiet.pop(source),
                                      self.silence.last_records[source]))

    def _report_missing(self, due: list[Due], now: int) -> None:
        batch = missing_spans_batch(due, self._window_s)
        fields = [self._requests.pop(d.trace_id, {}) for d in due]
        self.missing += len(due)
        self._on_missing(batch, fields)
        self.reconciler.declare_missing([d.trace_id for d in due], now)
