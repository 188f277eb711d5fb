"""Flagged records as the admin API keeps them (its recent flags and its audit view), taken on
the hot path (BatchStats.add_batch) for at most FLAGGED_PER_BATCH rows of a batch.

What is kept of a record: what its span shows (the batch is checked and redacted), plus, of its
log fields, only EVIDENCE_FIELDS (numbers and statuses that explain a flag and that redaction
has no reason to hide) and the written value of a field flagged invalid_field:<name>. The row of
log fields itself is not kept: it is the record as written, before redaction, and it would keep
every field's value alive in the admin's memory. The admin bounds the text (admin.window).

Cost: the kept rows are taken column by column, each column read by one C-level gather (an
itemgetter of the rows), and kept as one tuple a record (`FlaggedRows`); the dicts the API
shows are made from it only when the API is read (`FlaggedRows.record`). The shipped nginx
format's evidence comes from its decoded columns without making a row. Measured in the serve
path on the bench's batches (8 % of records flagged, the GC set as serve sets it): ~2.6 µs a
kept record (0.2 µs a record of the batch), and the admin's bookkeeping of them 0.27 → 0.10 µs
a record of the batch against the two dicts a record made at once before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain, repeat
from typing import Any

from .record import RecordBatch, row_getter
from .redaction import IDENTITY_FIELDS

__all__ = ["EVIDENCE_FIELDS", "FIELDS", "FLAGGED_PER_BATCH", "FlaggedRows", "flagged_records",
           "flagged_rows"]

FLAGGED_PER_BATCH = 100
# Log fields (as the shipped nginx format names them) that explain a truncation or a missing
# record: what nginx sent, what the upstream delivered, on which connection.
EVIDENCE_FIELDS = (
    "request_completion", "bytes_sent", "sent_http_content_length", "sent_http_content_type",
    "sent_http_content_encoding", "gzip_ratio", "upstream_status", "upstream_response_length",
    "upstream_bytes_received", "upstream_response_time", "request_time", "connection",
    "connection_requests", "server_protocol",
)
_SCALAR_TYPES = frozenset((str, int, float, bool))  # decoded JSON values are of these types
_TOP = ("time_unix_nano", "user_id", "app_id", "method", "path", "status")
_DETAIL = (
    "parent_span_id", "name", "route", "duration_ns", "client_address", "server_address",
    "user_agent", "body_bytes_sent", "completed", "content_length", "upstream_length",
    "compressed", "observed_time_unix_nano", "trace_id_generated", "unparsed", "attributes",
    "events", "file", "line",
)
_INVALID = "invalid_field:"


class FlaggedRows:
    """The kept (flagged) rows of one batch: a tuple a record, its values in FIELDS order, the
    dicts the API shows made by `record` when it is read. `text_bound`: no record's text (what
    admin.window bounds) is longer; None when that was not worked out (attributes, events or an
    invalid field's value there: the admin measures each record)."""

    __slots__ = ("source", "evidence_keys", "rows", "text_bound")

    def __init__(self, source: str, evidence_keys: tuple[str, ...], rows: list[tuple[Any, ...]],
                 text_bound: int | None) -> None:
        self.source = source
        self.evidence_keys = evidence_keys
        self.rows = rows
        self.text_bound = text_bound

    def __len__(self) -> int:
        return len(self.rows)

    def top(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A row as GET /api/flags shows it."""
        return {"time_unix_nano": row[0], "source": self.source, "trace_id": row[TRACE_ID],
                "span_id": row[TRACE_ID + 1], "flags": list(row[TRACE_ID + 2]),
                "user_id": row[1], "app_id": row[2], "method": row[3], "path": row[4],
                "status": row[5]}

    def record(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """A row as the admin keeps a flagged record: the top level is what GET /api/flags
        shows, `detail` what the audit view adds."""
        violations, reasons, evidence, invalid = row[TRACE_ID + 3:]
        detail = dict(zip(_DETAIL, row[len(_TOP):TRACE_ID], strict=True))
        detail["violations"] = violations
        detail["truncation_reasons"] = reasons
        log_fields = detail["log_fields"] = {
            k: v for k, v in zip(self.evidence_keys, evidence, strict=True)
            if v.__class__ in _SCALAR_TYPES}
        if invalid:
            log_fields.update(invalid)
        out = self.top(row)
        out["detail"] = detail
        return out

    def records(self) -> list[dict[str, Any]]:
        return list(map(self.record, self.rows))


# The values of a kept row: _TOP, _DETAIL, then these.
FIELDS = (*_TOP, *_DETAIL, "trace_id", "span_id", "flags", "violations", "truncation_reasons",
          "evidence", "invalid")
TRACE_ID = len(_TOP) + len(_DETAIL)
# Text of a row that the admin bounds (admin.window), besides its evidence and attributes.
_TEXT = ("path", "user_id", "app_id", "method", "name", "route", "client_address",
         "server_address", "user_agent", "file")


def flagged_rows(batch: RecordBatch, rows: Sequence[int]) -> FlaggedRows:
    """The given (flagged) rows of a checked batch, as the admin keeps them."""
    if not rows:
        return FlaggedRows(batch.source, (), [], 0)
    take = row_getter(rows)  # in the flags' order, which need not be the rows' order
    columns = [take(getattr(batch, key)) for key in (*_TOP, *_DETAIL)]
    try:
        found = take(batch.flags)
    except KeyError:  # a row without flags (tests, tools)
        found = [batch.flags.get(i, ()) for i in rows]
    keys, evidence = _evidence(batch.fields, rows, take)
    invalid_rows = _INVALID in "\n".join(chain.from_iterable(found))
    invalid = ([_invalid_values(batch.fields[i], f) for i, f in zip(rows, found, strict=True)]
               if invalid_rows else repeat(None))
    kept = list(zip(
        *columns, map(bytes.hex, take(batch.trace_id)), map(bytes.hex, take(batch.span_id)),
        found, map(batch.violations.get, rows), map(batch.truncation_reasons.get, rows),
        evidence, invalid, strict=False))  # repeat() columns are endless
    bound = None
    if not invalid_rows and not any(take(batch.attributes)) and not any(take(batch.events)):
        texts = [col for key, col in zip((*_TOP, *_DETAIL), columns, strict=True)
                 if key in _TEXT]
        bound = sum(map(_longest, (*texts, *zip(*evidence, strict=True))))
    return FlaggedRows(batch.source, keys, kept, bound)


def flagged_records(batch: RecordBatch, rows: Sequence[int]) -> list[dict[str, Any]]:
    """The given (flagged) rows of a checked batch as the admin API shows them (tests, tools)."""
    return flagged_rows(batch, rows).records()


def _longest(values: Sequence[Any]) -> int:
    return max(map(len, filter(str.__instancecheck__, values)), default=0)


def _evidence(fields: Sequence[Any], rows: Sequence[int],
              take: Callable[[Sequence[Any]], Sequence[Any]]
              ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """(keys, each row's values of them): the EVIDENCE_FIELDS the rows' log format has (the
    record keeps those of scalar value)."""
    columns_of = getattr(fields, "columns_of", None)
    if columns_of is None:  # rows of log fields: dicts (or structs) read one by one
        return EVIDENCE_FIELDS, [_row_evidence(row) for row in take(fields)]
    keys, columns = [], []
    for key, col in zip(EVIDENCE_FIELDS, columns_of(EVIDENCE_FIELDS), strict=True):
        if col is None:  # the format does not log it
            continue
        values = take(col)
        if set(map(type, values)).isdisjoint(_SCALAR_TYPES):  # no row has a value to show
            continue
        keys.append(key)
        columns.append(values)
    return tuple(keys), list(zip(*columns, strict=True)) if columns else [()] * len(rows)


def _row_evidence(fields: Any) -> tuple[Any, ...]:
    get = getattr(fields, "get", None)
    if get is None:
        return (None,) * len(EVIDENCE_FIELDS)
    return tuple(map(get, EVIDENCE_FIELDS))


def _invalid_values(fields: Any, flags: list[str]) -> dict[str, Any]:
    """The written values of invalid_field:<name> fields: the evidence of the flag. Identity
    fields stay out (redaction may be told to hide them; the row is the record unredacted)."""
    get = getattr(fields, "get", None)
    out = {}
    for flag in flags:
        name = flag[len(_INVALID):] if flag.startswith(_INVALID) else ""
        if get is not None and name and name not in IDENTITY_FIELDS:
            value = get(name)
            if value.__class__ in _SCALAR_TYPES:
                out[name] = value
    return out
