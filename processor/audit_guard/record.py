"""The audit record model: the one normalized shape every source is parsed into.

`AuditRecord` is one record; `RecordBatch` is the same fields for many records, held as columns
(one list per field). The pipeline works on batches: the per-record hot path is then a handful
of C-level `map`/`zip` passes per field instead of tens of Python operations per record, which is
what keeps it near 10 µs a record. `RecordBatch.row(i)` gives the AuditRecord view of a row.

Findings (flags, violations, truncation reasons) are sparse: most records have none, so they are
kept as {row: [...]} and cost nothing for clean rows.

Nothing here reads the clock or does I/O, so replaying a record always gives the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter, itemgetter, methodcaller
from typing import Any

from . import flags

__all__ = [
    "COLUMNS", "AuditRecord", "RecordBatch", "field_values", "row_getter", "unprocessable_batch",
]


@dataclass(slots=True, eq=False)
class AuditRecord:
    source: str  # "nginx", "app", "pgaudit", … — the program that wrote the record
    # Normalized audit fields (None = not present in the record).
    time_unix_nano: int | None = None  # when the request ended (nginx: $msec)
    duration_ns: int = 0  # nginx: $request_time
    method: str | None = None
    path: str | None = None
    route: str | None = None  # the templated route, e.g. /v1/datasets/{dataset_id}
    status: int | None = None
    user_id: str | None = None
    app_id: str | None = None
    request_id: str | None = None
    traceparent: str | None = None
    client_address: str | None = None
    server_address: str | None = None
    user_agent: str | None = None
    body_bytes_sent: int | None = None
    # Response completeness evidence (proxies log these; None = not in the record).
    completed: bool | None = None  # nginx $request_completion: "OK" → True, "" → False
    content_length: int | None = None  # the Content-Length sent to the client
    upstream_length: int | None = None  # body bytes the upstream delivered (last attempt)
    compressed: bool = False  # the proxy compressed the body (smaller than upstream's is fine)
    # Names of fields present in the record but not parseable (→ invalid_field:<name>).
    unparsed: tuple[str, ...] = ()
    # When the record was read on its way in (Docker's/CRI's `time`, the collector's observed
    # time): observed − time_unix_nano is the ingest lag.
    observed_time_unix_nano: int | None = None
    # Span name when it is not `{method} {route}` (e.g. "SELECT public.users" for a statement).
    name: str | None = None
    # Source-specific span attributes, OpenTelemetry semantic conventions where they exist
    # (e.g. {"db.system.name": "postgresql", "db.operation.name": "SELECT"}); None when none.
    attributes: dict[str, str | int | float | bool] | None = None
    # Span events: (time_unix_nano, name, attributes), e.g. the nginx error-log line that
    # showed the response was cut. None when none.
    events: list[tuple[int, str, dict[str, str | int]]] | None = None
    # Every field the record held, as written (salvaged ones too).
    fields: dict[str, Any] = field(default_factory=dict)
    # Findings, in the vocabulary of audit_guard.flags.
    flags: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # missing_field:* / invalid_field:*
    truncation_reasons: list[str] = field(default_factory=list)
    # Correlation (filled by audit_guard.correlate.traces).
    trace_id: bytes = b""
    span_id: bytes = b""
    parent_span_id: bytes = b""
    trace_id_generated: bool = False
    # Where the record came from (replay: file and 1-based line; service: None).
    raw: bytes | str | None = None
    file: str | None = None
    line: int | None = None

    def add_flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)


_SPARSE = ("flags", "violations", "truncation_reasons")
_SCALAR_DEFAULTS = {"duration_ns": 0, "compressed": False, "unparsed": (), "trace_id": b"",
                    "span_id": b"", "parent_span_id": b"", "trace_id_generated": False}
# The per-row columns of a RecordBatch: every AuditRecord field but the source and the findings.
COLUMNS = tuple(f.name for f in fields(AuditRecord) if f.name != "source" and f.name not in _SPARSE)


class RecordBatch:
    """Columns of audit records of one source. Every column is a list of length `len(batch)`."""

    def __init__(self, source: str, size: int, **columns: list[Any]) -> None:
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise TypeError(f"unknown RecordBatch columns: {sorted(unknown)}")
        self.source = source
        self.size = size
        for name in COLUMNS:
            col = columns.get(name)
            if col is None:
                col = [_SCALAR_DEFAULTS.get(name)] * size
                if name == "fields":
                    col = [{} for _ in range(size)]
            elif len(col) != size:
                raise ValueError(f"column {name} has {len(col)} rows, batch has {size}")
            setattr(self, name, col)
        self.flags: dict[int, list[str]] = {}
        self.violations: dict[int, list[str]] = {}
        self.truncation_reasons: dict[int, list[str]] = {}
        # When audit-guard received the batch (serve: the collector's read time of the request;
        # replay: the event-time clock); the rules' `age_s` is measured against it. None: unknown.
        self.received_unix_nano: int | None = None

    # Column attributes, declared for type checkers (set in __init__).
    time_unix_nano: list[int | None]
    duration_ns: list[int]
    method: list[str | None]
    path: list[str | None]
    route: list[str | None]
    status: list[int | None]
    user_id: list[str | None]
    app_id: list[str | None]
    request_id: list[str | None]
    traceparent: list[str | None]
    client_address: list[str | None]
    server_address: list[str | None]
    user_agent: list[str | None]
    body_bytes_sent: list[int | None]
    completed: list[bool | None]
    content_length: list[int | None]
    upstream_length: list[int | None]
    compressed: list[bool]
    unparsed: list[tuple[str, ...]]
    fields: Sequence[Any]  # a dict or struct a row; nginx_access.AuditJsonRows: columns
    trace_id: list[bytes]
    span_id: list[bytes]
    parent_span_id: list[bytes]
    trace_id_generated: list[bool]
    raw: list[bytes | str | None]
    file: list[str | None]
    line: list[int | None]

    def __len__(self) -> int:
        return self.size

    def field_column(self, key: str) -> list[Any]:
        """The log field `key` of every row (None where a row lacks it): `field_values`."""
        return field_values(self.fields, key)

    def add_flag(self, row: int, flag: str) -> None:
        current = self.flags.setdefault(row, [])
        if flag not in current:
            current.append(flag)

    def row(self, i: int) -> AuditRecord:
        rec = AuditRecord(self.source, **{name: getattr(self, name)[i] for name in COLUMNS})
        rec.flags = list(self.flags.get(i, ()))
        rec.violations = list(self.violations.get(i, ()))
        rec.truncation_reasons = list(self.truncation_reasons.get(i, ()))
        return rec

    def rows(self) -> list[AuditRecord]:
        return [self.row(i) for i in range(self.size)]

    def slice(self, start: int, end: int) -> RecordBatch:
        """Rows [start, end) as a batch of their own (the columns copied, findings re-indexed)."""
        if start == 0 and end >= self.size:
            return self
        part = RecordBatch(self.source, 0)
        part.size = end - start
        part.received_unix_nano = self.received_unix_nano
        for name in COLUMNS:
            setattr(part, name, getattr(self, name)[start:end])
        for sparse in _SPARSE:
            setattr(part, sparse, {i - start: list(found)
                                   for i, found in getattr(self, sparse).items()
                                   if start <= i < end})
        return part

    @classmethod
    def scatter(
        cls, source: str, size: int, parts: list[tuple[list[int], RecordBatch]]
    ) -> RecordBatch:
        """One batch from parts, each part's row j going to row rows[j] of the result."""
        batch = cls(source, size)
        for name in COLUMNS:
            col = getattr(batch, name)
            for rows, part in parts:
                for j, value in enumerate(getattr(part, name)):
                    col[rows[j]] = value
        for rows, part in parts:
            for sparse in _SPARSE:
                target = getattr(batch, sparse)
                for j, found in getattr(part, sparse).items():
                    target[rows[j]] = found
        return batch

    @classmethod
    def from_records(cls, source: str, records: list[AuditRecord]) -> RecordBatch:
        batch = cls(source, len(records),
                    **{name: [getattr(r, name) for r in records] for name in COLUMNS})
        for i, r in enumerate(records):
            if r.flags:
                batch.flags[i] = list(r.flags)
            if r.violations:
                batch.violations[i] = list(r.violations)
            if r.truncation_reasons:
                batch.truncation_reasons[i] = list(r.truncation_reasons)
        return batch


def field_values(fields: Sequence[Any], key: str) -> list[Any]:
    """The log field `key` of every row of `fields` (None where a row lacks it). Rows kept as
    columns (the C decoder's, nginx_access.AuditJsonRows) give the column itself. Rows of the
    shipped nginx format are structs with the fields as attributes: one C-level attrgetter
    pass, about a third of the cost of a get() call a row; rows of any other kind (dicts) fall
    back to get() at the first one that is not. Only a declared field is read by attribute
    (never one of the struct's methods, whatever the key)."""
    column = getattr(fields, "column", None)
    if column is not None:
        values = column(key)
        return values if values is not None else [None] * len(fields)
    if fields and key in getattr(fields[0], "__struct_fields__", ()):
        try:
            return list(map(attrgetter(key), fields))
        except AttributeError:
            pass
    return list(map(methodcaller("get", key), fields))


def row_getter(rows: Sequence[int], size: int | None = None
               ) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A function giving a column's values at `rows` (not empty), in their order, in one C call.
    `size`: the columns' length, given when `rows` are ascending — then, when they are all of
    them, the column itself."""
    if len(rows) == size:
        return _same
    if len(rows) > 1:
        return itemgetter(*rows)  # type: ignore[return-value]
    (row,) = rows
    return lambda col: (col[row],)


def _same(col: Sequence[Any]) -> Sequence[Any]:
    return col


_RAW_KEPT = 4096  # characters of an unprocessable record's raw text kept on its span


def unprocessable_batch(source: str, body: str | bytes) -> RecordBatch:
    """A record the pipeline failed on, as a span that keeps its raw text: never lost."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.encode("utf-8", "replace").decode("utf-8")[:_RAW_KEPT]
    batch = RecordBatch(source, 1, raw=[text], name=[f"unprocessable {source} record"],
                        attributes=[{"audit.raw": text}])
    batch.add_flag(0, flags.invalid_field("record"))
    return batch
