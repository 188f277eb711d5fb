"""PostgreSQL log files → log entries: the three file formats, and physical lines → logical
entries. Pure: no I/O. (The AUDIT payload inside an entry: audit_guard.sources.pgaudit.)

pgaudit writes its audit trail through PostgreSQL's own logging; the entry is in one of
PostgreSQL's three file formats:

* ``stderr``: `<log_line_prefix><SEVERITY>:  <message>`; every further line of a multi-line
  message starts with a TAB. The prefix is configurable, so the user, database and time are
  read through a regex translated from `log_line_prefix` (given, or the common ones tried:
  audit_guard.sources.pglog_entries).
* ``csvlog``: one CSV record per entry (`log_time`, `user_name`, `database_name`, …,
  `message`, …); a quoted field may hold newlines, so a record can span physical lines.
* ``jsonlog`` (PostgreSQL 15+): one JSON object per line (`timestamp`, `user`, `dbname`,
  `message`, …).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator

from ..grammar import timestamps
from .jsonline import decode_json_object

FORMATS = ("stderr", "csvlog", "jsonlog")

# csvlog columns (PostgreSQL 14/15; 13 stops at backend_type, 9.0–12 at application_name).
CSVLOG_COLUMNS = (
    "log_time", "user_name", "database_name", "process_id", "connection_from", "session_id",
    "session_line_num", "command_tag", "session_start_time", "virtual_transaction_id",
    "transaction_id", "error_severity", "sql_state_code", "message", "detail", "hint",
    "internal_query", "internal_query_pos", "context", "query", "query_pos", "location",
    "application_name", "backend_type", "leader_pid", "query_id",
)
CSV_MIN_COLUMNS = 23  # every csvlog since 9.0 has up to application_name: fewer means cut
_CSV_MESSAGE = CSVLOG_COLUMNS.index("message")

# Timestamps as PostgreSQL prints them (%m, %t, log_time, timestamp): see
# audit_guard.grammar.timestamps.postgres_ns.
_TS = timestamps.POSTGRES_TIME_PATTERN

# A csvlog record starts with log_time and a comma: used to resynchronise after a record
# that was cut inside a quoted field (its open quote would otherwise swallow what follows).
_CSV_RECORD_START = re.compile(rf"{_TS},")
_SEVERITIES = frozenset({
    "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3", "DEBUG4", "DEBUG5", "LOG", "INFO", "NOTICE",
    "WARNING", "ERROR", "FATAL", "PANIC",
})
_STDERR_LINE = re.compile(r"(?:.*?[\s\]:>|])?(?:DEBUG[1-5]?|LOG|INFO|NOTICE|WARNING|ERROR|FATAL|"
                          r"PANIC|DETAIL|HINT|STATEMENT|CONTEXT|LOCATION|QUERY):  ")


# --- formats and physical → logical lines ---------------------------------------------------


def _text(line: bytes | str) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return text[:-1] if text.endswith("\n") else text


def _size(line: bytes | str) -> int:
    if isinstance(line, bytes):
        return len(line) - line.endswith(b"\n")
    return len(line.encode("utf-8", "surrogatepass")) - line.endswith("\n")


def _csv_rows(text: str, strict: bool) -> list[list[str]]:
    # csv's per-field cap (128 KiB by default) is lower than a big statement; raising it only
    # ever accepts more, so doing it for the one process-wide knob is harmless.
    if len(text) >= csv.field_size_limit():
        csv.field_size_limit(len(text) + 1)
    return list(csv.reader(io.StringIO(text, newline=""), strict=strict))


def split_csv(text: str) -> tuple[list[str], bool]:
    """One CSV record → (fields, complete). Incomplete: unclosed quote or stray data."""
    try:
        rows = _csv_rows(text, strict=True)
        complete = True
    except csv.Error:
        rows = _csv_rows(text, strict=False)
        complete = False
    if not rows:
        return [], False
    return rows[0], complete and len(rows) == 1


def _looks_json(text: str) -> bool:
    decoded = decode_json_object(text)
    keys = decoded.obj.keys()
    return "timestamp" in keys and ("error_severity" in keys or "message" in keys)


def _looks_csv(text: str) -> bool:
    if _CSV_RECORD_START.match(text) is None:
        return False
    fields, _ = split_csv(text)  # a multi-line record's first line still has the severity
    return len(fields) > _CSV_MESSAGE and fields[11] in _SEVERITIES


def detect_format(sample_lines: list[bytes]) -> str | None:
    """"stderr", "csvlog" or "jsonlog" by majority of the sample's recognisable lines; None
    when no line looks like a PostgreSQL log entry."""
    votes = dict.fromkeys(FORMATS, 0)
    for raw in sample_lines:
        text = _text(raw)
        if not text.strip():
            continue
        if text.lstrip().startswith("{"):
            if _looks_json(text):
                votes["jsonlog"] += 1
        elif _looks_csv(text):
            votes["csvlog"] += 1
        elif _STDERR_LINE.match(text):
            votes["stderr"] += 1
    best = max(FORMATS, key=votes.__getitem__)
    return best if votes[best] else None


def entries(
    lines: Iterable[tuple[int, bytes | str]], fmt: str
) -> Iterator[tuple[int, str, int]]:
    """(first physical line number, entry text, byte size of its last physical line)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown PostgreSQL log format {fmt!r}; one of {FORMATS}")
    first, last_size = 0, 0
    parts: list[str] = []
    quotes = 0  # csvlog: quote count so far; odd = inside a quoted field
    for number, raw in lines:
        text, size = _text(raw), _size(raw)
        if fmt == "jsonlog":
            if text.strip():
                yield number, text, size
            continue
        if fmt == "stderr":
            # PostgreSQL puts a TAB before every further line of a message; anything else
            # starts a new entry. An empty line is nobody's continuation.
            if parts and text.startswith("\t"):
                parts.append(text)
                last_size = size
                continue
            if parts:
                yield first, "\n".join(parts), last_size
                parts = []
            if text:
                first, parts, last_size = number, [text], size
            continue
        # csvlog: a record ends at a line end outside quotes (doubled quotes keep the parity).
        if parts and quotes % 2 and _CSV_RECORD_START.match(text):
            yield first, "\n".join(parts), last_size  # cut inside a quoted field
            parts, quotes = [], 0
        if not parts:
            if not text:
                continue
            first = number
        parts.append(text)
        last_size = size
        quotes += text.count('"')
        if quotes % 2 == 0:
            yield first, "\n".join(parts), last_size
            parts, quotes = [], 0
    if parts:
        yield first, "\n".join(parts), last_size


def logical_records(
    lines: Iterable[tuple[int, bytes | str]], fmt: str
) -> Iterator[tuple[int, str]]:
    """Physical lines (1-based numbers) → logical log entries as (first line number, text).

    stderr: lines starting with a TAB continue the previous entry (kept as written, TABs
    included). csvlog: a record goes on while a quoted field is open, except that a line
    starting a new record ends a record cut inside a quote. jsonlog: one entry per line.
    Empty lines between entries are not entries; a trailing newline is dropped.
    """
    for first, text, _ in entries(lines, fmt):
        yield first, text

