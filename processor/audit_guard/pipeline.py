"""The pipeline shared by `serve` and `replay`:

    decode → parse → check (truncation, fields, lag) → correlate (route, ids, duplicates) →
    rules → spans

decode is audit_guard.decode; check → rules are `Pipeline.stages`, a named list run in order;
`correlate` runs a parsed batch through the error-log join, the stages, reconciliation's
findings and span building, as both shells (serve, replay) do.

Records are grouped by source (nginx, app, pgaudit) and processed as columnar batches.

Pure and synchronous: time comes in as an argument, nothing here reads the clock or does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from . import flags
from .checks.lag import check_lag
from .checks.truncation import check_truncation
from .checks.validate import AuditFieldValidator
from .config import Settings
from .correlate.counters import CounterReconciler, served_by_host
from .correlate.duplicates import Deduplicator, Origin, content_digest
from .correlate.errorlog import ErrorLogJoin
from .correlate.reconcile import RequestReconciler, expectations, expected_app_records
from .correlate.traces import assign_ids
from .decode import (
    APP,
    NGINX,
    NGINX_ERROR,
    PGAUDIT,
    SOURCES,
    SourceRows,
    any_value_to_python,
)
from .integrity.chain import ChainStage, NoChain
from .record import AuditRecord, RecordBatch, unprocessable_batch
from .redaction import Redactor
from .routes import DIFY_ROUTES, RouteTable
from .rules import RuleRegistry, RuleSet
from .sources import app, nginx_access, nginx_error, pgaudit
from .sources.app import FieldMapping
from .spans import SpanBatch, SpanBuilder
from .telemetry import BatchStats
from .wire import LogsRequest, group_logs, request_time

__all__ = [
    "APP", "CHUNK_ROWS", "NGINX", "NGINX_ERROR", "PGAUDIT", "SOURCES", "Pipeline",
    "any_value_to_python",
]

log = logging.getLogger(__name__)

CHUNK_ROWS = 1024


# A stage: works on a batch in place.
Stage = Callable[[RecordBatch, Origin], None]


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        rules: RuleRegistry | None = None,
        *,
        reconciler: RequestReconciler | None = None,
        counters: CounterReconciler | None = None,
        chain: ChainStage | None = None,
    ) -> None:
        """The stateful stages serve's Completeness and Integrity own (replay: a reconciler of
        its own), each None when off: `reconciler`, `counters`, the integrity `chain`."""
        self._settings = settings
        # Raises RuleError for a bad rule file: the caller fails fast at start-up.
        self.rules = rules or RuleRegistry(
            RuleSet.from_files(settings.rules_files, include_builtin=settings.builtin_rules)
        )
        # One memoised matcher for validation and reconciliation: both ask, per batch, about
        # the same distinct paths (and busy paths repeat across batches).
        audited = settings.audited_path_regex().match
        self._audited = lru_cache(maxsize=65_536)(lambda path: audited(path) is not None)
        self._validate = AuditFieldValidator(self._audited)
        self._routes = RouteTable([*DIFY_ROUTES, *settings.routes])
        self.dedup = Deduplicator(settings.dedup_max_records)
        self._in_transaction = False  # see begin()
        self._naive_tz = settings.naive_tz()  # times written without an offset are in this zone
        self.again: list[int] = []  # rows of the last checked batch that were seen before
        self._lag_ns = int(settings.lag_threshold_s * 1_000_000_000)
        self._app_mapping = FieldMapping(settings.app_field_map) if settings.app_field_map else None
        self.errors = ErrorLogJoin(int(settings.error_join_window_s * 1_000_000_000),
                                   report_unjoined=settings.error_join_unjoined == "report")
        self.service_names = {
            NGINX: settings.nginx_service_name,
            NGINX_ERROR: settings.nginx_service_name,
            APP: settings.app_service_name,
            PGAUDIT: settings.pgaudit_service_name,
        }
        self.span_builder = SpanBuilder(settings.max_attribute_bytes)
        # late_record for app records after a missing_record; access records per zone.
        self.reconciler = reconciler
        self.counters = counters
        self.redact = Redactor(settings.redaction)
        self.chain: ChainStage | NoChain = chain if chain is not None else NoChain()
        # check → correlate → rules: a named list of stages, run in order by `check`.
        self.stages = self._check_stages()

    # decode + parse ------------------------------------------------------------------------
    @staticmethod
    def group_logs(request: LogsRequest) -> dict[str, SourceRows]:
        """The request's records by source (audit_guard.wire, audit_guard.decode)."""
        return group_logs(request)

    def parse(
        self,
        source: str,
        bodies: list[str | bytes],
        mapped: dict[int, dict[str, Any]] | None = None,
        numbers: list[int] | None = None,
    ) -> RecordBatch:
        """Raw records of one source → RecordBatch (`numbers`: their line numbers, replay)."""
        if source == NGINX_ERROR:
            raise ValueError("nginx error-log lines are events, not records: see process_logs")
        if source == APP:
            batch = app.parse_lines(bodies, self._app_mapping, local_tz=self._naive_tz)
        elif source == PGAUDIT:
            lines = list(zip(numbers or range(1, len(bodies) + 1), bodies, strict=True))
            return pgaudit.parse(lines, log_line_prefix=self._settings.pgaudit_log_line_prefix)
        elif not mapped:
            batch = nginx_access.parse_lines(bodies)
        else:
            objs, cut, malformed = nginx_access.decode_lines(
                [b if i not in mapped else "{}" for i, b in enumerate(bodies)]
            )
            for i, obj in mapped.items():
                objs[i] = obj
            batch = nginx_access.parse_mappings(objs)
            batch.raw = [b if i not in mapped else None for i, b in enumerate(bodies)]
            nginx_access.mark_decoding(batch, cut, malformed)
        if numbers is not None:
            batch.line = numbers
        return batch

    # check + correlate -------------------------------------------------------------------
    def check(self, batch: RecordBatch, content: bytes | None = None,
              offsets: list[int | None] | None = None) -> RecordBatch:
        """check (truncation, fields, lag) → correlate (route, ids, duplicates) → rules.
        `content`: a digest of the raw records, default: of `batch.raw`; `offsets`: the
        records' offsets in their files, where the collector gave them (see Deduplicator)."""
        origin = Origin(content_digest(batch.raw) if content is None else content, offsets)
        for _name, stage in self.stages:
            stage(batch, origin)
        return batch

    def _check_stages(self) -> list[tuple[str, Stage]]:
        """The stages after parse, in the order they run (see `check`)."""
        lag_ns = self._lag_ns

        def route(batch: RecordBatch, origin: Origin) -> None:
            batch.route = self._routes.routes(batch.path)

        def duplicates(batch: RecordBatch, origin: Origin) -> None:
            self.again = self.dedup(batch, origin.content, origin.offsets)
            if not self._in_transaction:
                self.dedup.commit()

        return [
            ("truncation", lambda batch, origin: check_truncation(batch)),
            ("fields", lambda batch, origin: self._validate(batch)),
            ("lag", lambda batch, origin: check_lag(batch, lag_ns)),
            ("route", route),
            ("ids", lambda batch, origin: assign_ids(batch)),
            ("duplicates", duplicates),
            ("rules", lambda batch, origin: self.rules.flag(batch)),
            # Last: flags are computed on the record as written, what leaves is redacted.
            *([("redaction", lambda batch, origin: self.redact(batch))]
              if self.redact.active else []),
        ]

    def check_one(self, rec: AuditRecord) -> AuditRecord:
        """`check` for a single record (tests, tools)."""
        return self.check(RecordBatch.from_records(rec.source, [rec])).row(0)

    def records_from_logs(self, request: ExportLogsServiceRequest) -> list[RecordBatch]:
        """Every record of a request, checked, one batch per source (tests, tools)."""
        return [
            self.check(self._parse_rows(source, rows))
            for source, rows in self.group_logs(request).items()
            if source != NGINX_ERROR  # events, not records: see process_logs
        ]

    def _parse_rows(self, source: str, rows: SourceRows, start: int = 0, end: int | None = None
                    ) -> RecordBatch:
        end = len(rows.bodies) if end is None else end
        mapped = {i - start: m for i, m in rows.mapped.items() if start <= i < end}
        batch = self.parse(source, rows.bodies[start:end], mapped)
        if rows.observed and source == APP:
            batch.observed_time_unix_nano = rows.observed[start:end]
        for i in rows.partial:
            if start <= i < end:
                batch.truncation_reasons.setdefault(i - start, []).append(flags.PARTIAL_LINE)
        for i in rows.cut:  # syslog messages cut at a size cap (audit_guard.sources.syslog)
            if start <= i < end:
                batch.truncation_reasons.setdefault(i - start, []).append(flags.SIZE_LIMIT)
        return batch

    # spans -------------------------------------------------------------------------------
    def to_traces(self, batch: RecordBatch, now_ns: int) -> bytes:
        """The batch's spans as a serialized ExportTraceServiceRequest (b"" when none)."""
        spans = SpanBatch(self.service_names.get(batch.source, batch.source))
        spans.spans = self.span_builder.spans(batch, now_ns)
        return spans.request_bytes()

    def _note_nginx(self, batch: RecordBatch, stats: BatchStats, read_ns: int) -> None:
        """Nginx records, for reconciliation: the audited requests that expect an app record
        (before the first app record too, in the start-up window: the reconciler holds them, as
        the collector may send a file's first records before the app's) and the record times per
        server (once nginx's counters were read, as they cost nothing before)."""
        if self.reconciler is not None and self.reconciler.holding(read_ns):
            rows = expected_app_records(batch, self._audited)
            if self.again:  # sent again (a retried request): expected the first time already
                seen = set(self.again)
                rows = [i for i in rows if i not in seen]
            stats.expected += expectations(batch, rows)
        stats.resent += len(self.again)
        if self.counters is not None and self.counters.active:
            served_by_host(batch, stats.served, self.again)  # those were counted the first time

    def _note_app(self, batch: RecordBatch, stats: BatchStats | None) -> None:
        """App records: their trace ids resolve pending requests (once handed on); one whose
        request was already reported missing is flagged late_record."""
        joinable = [t for t, g in zip(batch.trace_id, batch.trace_id_generated, strict=True)
                    if not g]
        if stats is not None:
            stats.app_seen += joinable
        reconciler = self.reconciler
        if reconciler is not None and reconciler.has_missing():
            for i, trace_id in enumerate(batch.trace_id):
                if reconciler.is_missing(trace_id):
                    batch.add_flag(i, flags.LATE_RECORD)

    # transaction -------------------------------------------------------------------------
    def begin(self) -> tuple[Any, ...]:
        """Start a transaction over the stateful stages (duplicates, error-log join): `rollback`
        to the returned savepoint when the spans could not be handed on, `commit` once they
        were. Outside a transaction (replay, tools) every batch commits at once."""
        self._in_transaction = True
        return self._savepoint()

    def _savepoint(self) -> tuple[Any, ...]:
        return self.dedup.savepoint(), self.errors.savepoint(), self.chain.savepoint()

    def rollback(self, savepoint: tuple[Any, ...]) -> None:
        self._undo(savepoint)
        self._in_transaction = False

    def commit(self) -> None:
        self.chain.commit()  # first: a head file that cannot be written undoes all
        self.dedup.commit()
        self._in_transaction = False

    def _undo(self, savepoint: tuple[Any, ...]) -> None:
        self.dedup.rollback(savepoint[0])
        self.errors.rollback(savepoint[1])
        self.chain.rollback(savepoint[2])

    # the whole request -------------------------------------------------------------------
    def process_logs(
        self, request: LogsRequest, now_ns: int, stats: BatchStats | None = None
    ) -> tuple[bytes, int]:
        """A logs request → (serialized ExportTraceServiceRequest, number of records); what was
        found is added to `stats` when given. State changes of the stateful stages are pending
        until `commit` (see `begin`).

        The same request processed again gives the same spans: a record without a time of its
        own ends when the collector read the request's first record, not at `now_ns` (which
        only drives the error-log join's windows).

        Large requests are processed in chunks of CHUNK_ROWS records: the per-chunk working set
        then stays in the CPU cache (measured: 8192-record batches in one piece run ~30% slower).
        """
        if self._in_transaction:
            return self._process_logs(request, now_ns, stats)
        savepoint = self.begin()  # outside a transaction (tests, tools): commit at once
        try:
            out = self._process_logs(request, now_ns, stats)
        except BaseException:
            self.rollback(savepoint)
            raise
        self.commit()
        return out

    def _process_logs(self, request: LogsRequest, now_ns: int,
                      stats: BatchStats | None) -> tuple[bytes, int]:
        parts = []
        count = 0
        read_ns = request_time(request) or now_ns
        groups = self.group_logs(request)
        # Error-log records first: nginx writes a cut's error line before the request's access
        # line, so its event is usually waiting when the access record comes (see ErrorLogJoin).
        extra: list[RecordBatch] = []
        error_rows = groups.pop(NGINX_ERROR, None)
        if error_rows is not None:
            count += len(error_rows.bodies)
            events = nginx_error.parse_lines(enumerate(error_rows.bodies, 1), self._naive_tz)
            if error_rows.offsets:  # the line's place in its file: its identity (see _same)
                for event in events:
                    event.at = error_rows.offsets[event.line - 1]
            self.errors.on_events(events, now_ns)
        for source, rows in groups.items():
            # One resource per origin (the collector's resource attributes and file), so a
            # span says which host, container and file its record came from.
            for first, last, origin in rows.runs():
                spans = SpanBatch(self.service_names[source], origin)
                for start in range(first, last, CHUNK_ROWS):
                    end = min(start + CHUNK_ROWS, last)
                    spans.spans += self._isolated(source, rows, start, end, read_ns, stats)
                parts += spans.request_parts()
                if stats is not None:
                    stats.spans += len(spans.spans)
            count += len(rows.bodies)
        extra += self.errors.expired_batches(now_ns)
        for batch in extra:
            if self.redact.active:
                self.redact(batch)
            parts.append(self.to_traces(batch, read_ns))
            if stats is not None:
                stats.add_batch(batch)
                stats.spans += len(batch)
        return b"".join(parts), count

    def _chunk(self, source: str, rows: SourceRows, start: int, end: int, read_ns: int,
               stats: BatchStats | None) -> list[bytes]:
        """decode → parse → check → correlate → rules → spans for rows [start, end)."""
        batch = self._parse_rows(source, rows, start, end)
        # The chunk's place in its request is part of its identity: a line written twice, cut
        # into chunks of its own by the net below, is still a duplicate.
        return self.correlate(batch, read_ns, stats,
                              content_digest(rows.bodies[start:end]) + start.to_bytes(4),
                              rows.offsets[start:end] if rows.offsets else None)

    def correlate(self, batch: RecordBatch, read_ns: int, stats: BatchStats | None,
                  content: bytes | None = None, offsets: list[int | None] | None = None,
                  *, spans: bool = True) -> list[bytes]:
        """A parsed batch through the stateful stages, as both shells run them: the error-log
        join → check (duplicates, rules) → reconciliation's findings → spans (unless `spans`
        is False: replay without --export). Returns the spans."""
        source = batch.source
        if source == NGINX:
            self.errors.on_access(batch)
        batch.received_unix_nano = read_ns  # for the rules' age_s (docs/rules.md, freshness)
        batch = self.check(batch, content, offsets)
        if source == APP:
            self._note_app(batch, stats)
        built = self.span_builder.spans(batch, read_ns) if spans else []
        built = self.chain(batch, built, self.again) if built else built
        if source == NGINX:
            self.errors.remember(batch)
            if stats is not None:
                self._note_nginx(batch, stats, read_ns)
        if stats is not None:
            stats.add_batch(batch, self.rules.current)
        return built

    def _isolated(self, source: str, rows: SourceRows, start: int, end: int, read_ns: int,
                  stats: BatchStats | None) -> list[bytes]:
        """`_chunk`, with a last-resort net: no record may fail its batch. Values are range-
        checked when parsed, so this is for bugs: the chunk's state changes are undone, its
        rows are processed one by one, and a row that still fails is exported as an
        `invalid_field:record` span carrying its raw text (counted, logged once per chunk)."""
        savepoint = self._savepoint()
        try:
            return self._chunk(source, rows, start, end, read_ns, stats)
        except Exception:
            log.exception("processing a chunk of %d %s records failed; retrying them one by "
                          "one (this is a bug: please report it with the log line)",
                          end - start, source)
            self._undo(savepoint)
        out: list[bytes] = []
        for i in range(start, end):
            savepoint = self._savepoint()
            try:
                out += self._chunk(source, rows, i, i + 1, read_ns, stats)
            except Exception:
                self._undo(savepoint)
                batch = unprocessable_batch(source, rows.bodies[i])
                assign_ids(batch)
                out += self.span_builder.spans(batch, read_ns)
                if stats is not None:
                    stats.add_batch(batch)
                    stats.unprocessable += 1
        return out

