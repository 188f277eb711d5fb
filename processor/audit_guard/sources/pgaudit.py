"""PostgreSQL pgaudit log entries → audit records (one per `AUDIT:` line). Pure: no I/O.

pgaudit writes its audit trail through PostgreSQL's own logging, so one audit event is one log
entry whose message is

    AUDIT: AUDIT_TYPE,STATEMENT_ID,SUBSTATEMENT_ID,CLASS,COMMAND,OBJECT_TYPE,OBJECT_NAME,
           STATEMENT,PARAMETER[,ROWS]

(CSV: a field with a comma, quote or newline is quoted, quotes doubled; ROWS only with
`pgaudit.log_rows`). The entry itself is in one of PostgreSQL's three file formats (stderr,
csvlog, jsonlog: audit_guard.sources.pglog_lines, which turns physical lines into entries);
audit_guard.sources.pglog_entries reads what the entry's container says (time, user, database,
client, message).

Entries that are not AUDIT lines (startup messages, errors, …) are not records.

Damage, kept simple:

* An AUDIT payload that cannot be split into at least 8 fields, ends inside a quoted field, or
  has non-integer statement ids is still a record: whatever fields are there are filled.
* A record whose last physical line is exactly a known size cap (`SIZE_CAPS`: a syslog,
  collector or container-runtime limit) gets the truncation reason ``size_limit``, even if it
  parses: a cut inside the last, unquoted field leaves a well-formed prefix. (Not for a jsonlog
  line that decodes completely: JSON shows its own end.)
* A jsonlog line whose JSON ends mid-value gets ``json_cut`` (fields before the cut, and the cut
  message's prefix, are salvaged), as for the nginx source.
* Damage that no truncation reason explains (a broken payload, a CSV record with an unclosed
  quote or too few columns) is ``malformed``.

Reasons go both into `truncation_reasons` and, as `truncated:<reason>`, into `flags`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from .. import flags
from ..grammar import ranges
from ..grammar.traceparent import parse_traceparent
from ..record import AuditRecord, RecordBatch
from .pglog_entries import (
    AUDIT_PREFIX,
    COMMON_PREFIXES,
    COMMON_REGEXES,
    Entry,
    csv_entry,
    json_entry,
    prefix_regex,
    stderr_entry,
)
from .pglog_lines import CSVLOG_COLUMNS, FORMATS, detect_format, entries, logical_records, split_csv

__all__ = [
    "COMMON_PREFIXES",
    "CSVLOG_COLUMNS",
    "FORMATS",
    "SIZE_CAPS",
    "SOURCE",
    "detect_format",
    "logical_records",
    "parse",
    "prefix_regex",
    "sqlcomment_traceparent",
]

SOURCE = "pgaudit"

# Line lengths (bytes, without the newline) that betray a cut by some writer or shipper:
# RFC 3164 syslog (1024), the 2 KiB limit of many syslog relays, rsyslog's default
# maxMessageSize (8 KiB), Docker/CRI's 16 KiB line split, the collector's max_log_size (1 MiB).
SIZE_CAPS = frozenset({1024, 2048, 8192, 16384, 1024 * 1024})

_AUDIT_FIELDS = (
    "audit_type", "statement_id", "substatement_id", "class", "command", "object_type",
    "object_name", "statement", "parameter", "rows",
)
_MIN_AUDIT_FIELDS = 8  # up to STATEMENT: without it the line says too little to trust
# PARAMETER values that are markers, not parameters.
_NO_PARAMETER = frozenset({"<none>", "<not logged>", "<previously logged>"})
_PREVIOUSLY_LOGGED = "<previously logged>"  # pgaudit.log_statement_once

# sqlcommenter: /*key='value',key2='value2'*/, keys and values URL-encoded, ' escaped as \'.
_COMMENT = re.compile(r"/\*(.*?)\*/", re.S)
_PAIR = re.compile(r"\s*([^=,\s]+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*(?:,|\Z)", re.S)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def sqlcomment_traceparent(statement: str) -> str | None:
    """The W3C traceparent an sqlcommenter comment (`/*traceparent='00-…-…-01'*/`, maybe
    with other key='value' pairs, URL-encoded) carries in the statement; None if none valid.

    sqlcommenter appends its comment at the end, so comments are read last first.
    """
    if "/*" not in statement:
        return None
    for comment in reversed(_COMMENT.findall(statement)):
        for key, value in _PAIR.findall(comment):
            if unquote(key).strip().lower() != "traceparent":
                continue
            candidate = unquote(value.replace("\\'", "'")).strip().lower()
            if parse_traceparent(candidate) is not None:
                return candidate
    return None



# --- entries → records ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Payload:
    """An AUDIT line's payload: its fields, and the ids and row count that passed the range
    checks."""

    audit: dict[str, str]
    statement_id: int | None
    substatement_id: int | None
    rows: int | None
    rows_out_of_range: bool  # ROWS was an integer beyond int64 (unparsed)
    ok: bool  # whole, with at least the fields up to STATEMENT and integer ids in range


def _payload(message: str) -> _Payload:
    values, complete = split_csv(message[len(AUDIT_PREFIX):])
    audit: dict[str, str] = dict(zip(_AUDIT_FIELDS, values, strict=False))
    statement_id, substatement_id = (_int(audit.get("statement_id")),
                                     _int(audit.get("substatement_id")))
    payload_ok = (complete and len(values) >= _MIN_AUDIT_FIELDS
                  and statement_id is not None and substatement_id is not None)
    rows = _int(audit.get("rows"))
    # Range checks (audit_guard.grammar.ranges): an id or count beyond int64 cannot be exported.
    if statement_id is not None and not ranges.size_ok(statement_id):
        statement_id, payload_ok = None, False
    if substatement_id is not None and not ranges.size_ok(substatement_id):
        substatement_id, payload_ok = None, False
    rows_out_of_range = rows is not None and not ranges.size_ok(rows)
    return _Payload(audit, statement_id, substatement_id, None if rows_out_of_range else rows,
                    rows_out_of_range, payload_ok)


def _attributes(payload: _Payload, database: str | None) -> dict[str, str | int | float | bool]:
    audit = payload.audit
    command = audit.get("command") or None
    object_name = audit.get("object_name") or None
    object_type = audit.get("object_type") or None
    statement = audit.get("statement")
    parameter = audit.get("parameter")
    attributes: dict[str, str | int | float | bool] = {"db.system.name": "postgresql"}
    if command:
        attributes["db.operation.name"] = command
    if object_name:
        attributes["db.collection.name"] = object_name
    if statement is not None and statement != _PREVIOUSLY_LOGGED:
        attributes["db.query.text"] = statement
    if database:
        attributes["db.namespace"] = database
    for key, value in (("audit_type", audit.get("audit_type")), ("class", audit.get("class"))):
        if value:
            attributes[f"pgaudit.{key}"] = value
    if payload.statement_id is not None:
        attributes["pgaudit.statement_id"] = payload.statement_id
    if payload.substatement_id is not None:
        attributes["pgaudit.substatement_id"] = payload.substatement_id
    if object_type:
        attributes["pgaudit.object_type"] = object_type
    if parameter is not None and parameter not in _NO_PARAMETER:
        attributes["pgaudit.parameter"] = parameter
    if payload.rows is not None:
        attributes["pgaudit.rows"] = payload.rows
    return attributes


def _flag_damage(
    record: AuditRecord, entry: Entry, payload_ok: bool, last_size: int, fmt: str
) -> None:
    reasons = []
    if entry.json_cut:
        reasons.append(flags.JSON_CUT)
    if last_size in SIZE_CAPS and not (fmt == "jsonlog" and not entry.json_cut):
        reasons.append(flags.SIZE_LIMIT)
    for reason in reasons:
        record.truncation_reasons.append(reason)
        record.add_flag(flags.truncated(reason))
    if not reasons and (entry.broken or not payload_ok):
        record.add_flag(flags.MALFORMED)


def _record(first: int, text: str, last_size: int, fmt: str, entry: Entry) -> AuditRecord:
    assert entry.message is not None
    payload = _payload(entry.message)
    command = payload.audit.get("command") or None
    object_name = payload.audit.get("object_name") or None
    statement = payload.audit.get("statement")
    unparsed = ["rows"] if payload.rows_out_of_range else []
    time_ns = entry.time_ns
    if time_ns is not None and not ranges.time_ok(time_ns):
        time_ns = None
    if entry.time_text and time_ns is None:
        unparsed.insert(0, "time")
    record = AuditRecord(
        SOURCE,
        time_unix_nano=time_ns,
        user_id=entry.user,
        client_address=entry.client,
        traceparent=sqlcomment_traceparent(statement) if statement else None,
        name=f"{command} {object_name}" if command and object_name else command,
        attributes=_attributes(payload, entry.database),
        fields={**entry.fields, "audit": payload.audit},
        unparsed=tuple(unparsed),
        raw=text,
        line=first,
    )
    _flag_damage(record, entry, payload.ok, last_size, fmt)
    return record


def parse(
    lines: Sequence[tuple[int, bytes | str]],
    fmt: str | None = None,
    log_line_prefix: str | None = None,
) -> RecordBatch:
    """PostgreSQL log lines as (1-based line number, line) → one record per pgaudit entry.

    `fmt` is detected from the first lines when not given (stderr when unrecognisable).
    `log_line_prefix` (stderr only) is the server's setting; without it COMMON_PREFIXES are
    tried, then a generic reading (time and `user@db` found anywhere before the severity).
    Never raises on bad input: damage becomes flags (see the module docstring).
    """
    if fmt is None:
        fmt = detect_format([raw if isinstance(raw, bytes) else raw.encode()
                             for _, raw in lines[:100]]) or "stderr"
    regexes = (prefix_regex(log_line_prefix),) if log_line_prefix else COMMON_REGEXES
    records = []
    for first, text, last_size in entries(lines, fmt):
        if AUDIT_PREFIX not in text:  # cheap: most entries of a busy log are not audit lines
            continue
        if fmt == "stderr":
            entry = stderr_entry(text, regexes)
        elif fmt == "csvlog":
            entry = csv_entry(text)
        else:
            entry = json_entry(text)
        if entry.message is None or not entry.message.startswith(AUDIT_PREFIX):
            continue
        records.append(_record(first, text, last_size, fmt, entry))
    return RecordBatch.from_records(SOURCE, records)
