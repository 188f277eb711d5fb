"""PostgreSQL pgaudit log entries → audit records (one per `AUDIT:` line). Pure: no I/O.

pgaudit writes its audit trail through PostgreSQL's own logging, so one audit event is one log
entry whose message is

    AUDIT: AUDIT_TYPE,STATEMENT_ID,SUBSTATEMENT_ID,CLASS,COMMAND,OBJECT_TYPE,OBJECT_NAME,
           STATEMENT,PARAMETER[,ROWS]

(CSV: a field with a comma, quote or newline is quoted, quotes doubled; ROWS only with
`pgaudit.log_rows`). The entry itself is in one of PostgreSQL's three file formats:

* ``stderr``: `<log_line_prefix><SEVERITY>:  <message>`; every further line of a multi-line
  message starts with a TAB. The prefix is configurable, so the user, database and time are
  read through a regex translated from `log_line_prefix` (given, or the common ones tried).
* ``csvlog``: one CSV record per entry (`log_time`, `user_name`, `database_name`, …,
  `message`, …); a quoted field may hold newlines, so a record can span physical lines.
* ``jsonlog`` (PostgreSQL 15+): one JSON object per line (`timestamp`, `user`, `dbname`,
  `message`, …).

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

import csv
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote

import orjson

from .. import flags
from ..grammar import ranges, timestamps
from ..grammar.traceparent import parse_traceparent
from ..record import AuditRecord, RecordBatch
from .jsonline import decode_json_object

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
FORMATS = ("stderr", "csvlog", "jsonlog")

# Line lengths (bytes, without the newline) that betray a cut by some writer or shipper:
# RFC 3164 syslog (1024), the 2 KiB limit of many syslog relays, rsyslog's default
# maxMessageSize (8 KiB), Docker/CRI's 16 KiB line split, the collector's max_log_size (1 MiB).
SIZE_CAPS = frozenset({1024, 2048, 8192, 16384, 1024 * 1024})

# csvlog columns (PostgreSQL 14/15; 13 stops at backend_type, 9.0–12 at application_name).
CSVLOG_COLUMNS = (
    "log_time", "user_name", "database_name", "process_id", "connection_from", "session_id",
    "session_line_num", "command_tag", "session_start_time", "virtual_transaction_id",
    "transaction_id", "error_severity", "sql_state_code", "message", "detail", "hint",
    "internal_query", "internal_query_pos", "context", "query", "query_pos", "location",
    "application_name", "backend_type", "leader_pid", "query_id",
)
_CSV_MIN_COLUMNS = 23  # every csvlog since 9.0 has up to application_name: fewer means cut
_CSV_MESSAGE = CSVLOG_COLUMNS.index("message")

# log_line_prefix values seen in the wild, tried in order when none is given: Debian's
# default, PostgreSQL's default, the pgBadger recommendations, Amazon RDS's fixed prefix.
COMMON_PREFIXES = (
    "%m [%p] %q%u@%d ",
    "%m [%p] ",
    "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: user=%u,db=%d,app=%a,client=%h ",
    "%t:%r:%u@%d:[%p]:",
)

_AUDIT = "AUDIT: "
_AUDIT_FIELDS = (
    "audit_type", "statement_id", "substatement_id", "class", "command", "object_type",
    "object_name", "statement", "parameter", "rows",
)
_MIN_AUDIT_FIELDS = 8  # up to STATEMENT: without it the line says too little to trust
# PARAMETER values that are markers, not parameters.
_NO_PARAMETER = frozenset({"<none>", "<not logged>", "<previously logged>"})
_PREVIOUSLY_LOGGED = "<previously logged>"  # pgaudit.log_statement_once

# Timestamps as PostgreSQL prints them (%m, %t, log_time, timestamp): see
# processor.grammar.timestamps.postgres_ns.
_TS = timestamps.POSTGRES_TIME_PATTERN

# log_line_prefix escapes → (capture group name or None, regex). Free text (%a, %i, %b) is
# matched lazily and the rest greedily without spaces, so literal separators in the prefix
# decide where a value ends (`%u@%d` keeps an Azure-style `user@server` role whole).
_ESCAPES: dict[str, tuple[str | None, str]] = {
    "a": ("application_name", r".*?"),
    "u": ("user", r"\S*"),
    "d": ("database", r"\S*"),
    "r": ("remote", r"\S*"),
    "h": ("host", r"\S*"),
    "b": ("backend_type", r".*?"),
    "p": ("pid", r"\d+"),
    "P": ("leader_pid", r"\d*"),
    "t": ("time", _TS),
    "m": ("time", _TS),
    "n": ("epoch", r"\d+(?:\.\d+)?"),
    "i": ("command_tag", r".*?"),
    "e": ("sql_state", r"[0-9A-Z]{5}"),
    "c": ("session_id", r"[0-9a-f]+\.[0-9a-f]+"),
    "l": ("line_num", r"\d+"),
    "s": ("session_start", _TS),
    "v": ("vxid", r"\S*"),
    "x": ("txid", r"\d+"),
    "Q": ("query_id", r"-?\d+"),
}
_ESCAPE = re.compile(r"%(-?\d+)?(.)", re.S)
# After the prefix: the severity (translated with lc_messages, hence \w) and two spaces.
_SEVERITY_MESSAGE = r"(?P<severity>\w+):  (?P<message>.*)\Z"
# No known prefix matched: the first `WORD:  ` is taken as the severity.
_GENERIC = re.compile(r"(?P<prefix>.*?)(?<![^\s\]:>|])(?P<severity>[A-Z][A-Z0-9]*):  "
                      r"(?P<message>.*)\Z", re.S)
_GENERIC_TIME = re.compile(_TS)
_GENERIC_USER_DB = re.compile(r"(?:^|[\s\[(])([^\s@\[\]()]+)@([^\s@\[\]():,|]+)")

# A csvlog record starts with log_time and a comma: used to resynchronise after a record
# that was cut inside a quoted field (its open quote would otherwise swallow what follows).
_CSV_RECORD_START = re.compile(rf"{_TS},")
_SEVERITIES = frozenset({
    "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3", "DEBUG4", "DEBUG5", "LOG", "INFO", "NOTICE",
    "WARNING", "ERROR", "FATAL", "PANIC",
})
_STDERR_LINE = re.compile(r"(?:.*?[\s\]:>|])?(?:DEBUG[1-5]?|LOG|INFO|NOTICE|WARNING|ERROR|FATAL|"
                          r"PANIC|DETAIL|HINT|STATEMENT|CONTEXT|LOCATION|QUERY):  ")

# sqlcommenter: /*key='value',key2='value2'*/, keys and values URL-encoded, ' escaped as \'.
_COMMENT = re.compile(r"/\*(.*?)\*/", re.S)
_PAIR = re.compile(r"\s*([^=,\s]+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*(?:,|\Z)", re.S)
_JSON_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)', re.S)


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


def _split_csv(text: str) -> tuple[list[str], bool]:
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
    fields, _ = _split_csv(text)  # a multi-line record's first line still has the severity
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


def _entries(
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
    for first, text, _ in _entries(lines, fmt):
        yield first, text


# --- log_line_prefix → regex -----------------------------------------------------------------


def _translate(prefix: str, used: set[str]) -> str:
    out = []
    pos = 0
    for m in _ESCAPE.finditer(prefix):
        out.append(re.escape(prefix[pos:m.start()]))
        pos = m.end()
        padding, esc = m.group(1), m.group(2)
        if esc == "%":
            out.append("%")
            continue
        if esc not in _ESCAPES:
            continue  # PostgreSQL prints nothing for an unknown escape
        name, body = _ESCAPES[esc]
        piece = f"(?P<{name}>{body})" if name and name not in used else f"(?:{body})"
        if name:
            used.add(name)
        # %-10u / %10u pad the value with spaces to that width.
        out.append(rf" *{piece} *" if padding else piece)
    out.append(re.escape(prefix[pos:]))
    return "".join(out)


def prefix_regex(log_line_prefix: str) -> re.Pattern[str]:
    """The regex of a whole stderr entry written with this `log_line_prefix`.

    Groups: those of the escapes present (time for %m/%t, epoch for %n, user, database, pid,
    application_name, host, remote, session_id, line_num, vxid, txid, …), then `severity` and
    `message`. Everything after %q is optional: processes without a session stop there.
    """
    used: set[str] = set()
    head, q, tail = log_line_prefix.partition("%q")
    pattern = _translate(head, used)
    if q:
        pattern += f"(?:{_translate(tail, used)})?"
    return re.compile(pattern + _SEVERITY_MESSAGE, re.S)


_COMMON_REGEXES = tuple(prefix_regex(p) for p in COMMON_PREFIXES)


# --- values ---------------------------------------------------------------------------------


def _time_ns(text: str | None) -> int | None:
    """A PostgreSQL timestamp → Unix ns; None when it is not one or its zone is unknown."""
    return timestamps.postgres_ns(text) if text else None


def _epoch_ns(text: str | None) -> int | None:
    return timestamps.epoch_seconds_ns(text) if text else None


def _identity(value: Any) -> str | None:
    """A role or database name; PostgreSQL prints "[unknown]" before authentication."""
    if value is None or not isinstance(value, str | int) or isinstance(value, bool):
        return None  # jsonlog: an object or array is no name
    text = str(value)
    return text if text and text != "[unknown]" else None


def _client(host: str | None, port_in_value: bool) -> str | None:
    """A client address from %h / %r / connection_from; a unix socket ("[local]") has none."""
    if not host or host == "[local]":
        return None
    if host.endswith(")") and "(" in host:  # %r: host(port)
        return host[: host.rindex("(")] or None
    if port_in_value and ":" in host:  # csvlog connection_from: host:port
        return host.rsplit(":", 1)[0] or None
    return host


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


class _Entry:
    """What one log entry's container (prefix, CSV columns, JSON keys) says."""

    __slots__ = ("time_ns", "time_text", "user", "database", "client", "message", "fields",
                 "json_cut", "broken")

    def __init__(self) -> None:
        self.time_ns: int | None = None
        self.time_text: str | None = None  # set when a time is present (parsed or not)
        self.user: str | None = None
        self.database: str | None = None
        self.client: str | None = None
        self.message: str | None = None
        self.fields: dict[str, Any] = {}
        self.json_cut = False  # jsonlog: the JSON ends mid-value
        self.broken = False  # the container itself is damaged (CSV unclosed/short)


def _stderr_entry(text: str, regexes: Sequence[re.Pattern[str]]) -> _Entry:
    entry = _Entry()
    # One TAB per continuation line was added by PostgreSQL; the statement's own stay.
    text = text.replace("\n\t", "\n")
    groups: dict[str, str | None] | None = None
    for regex in regexes:
        m = regex.match(text)
        if m is not None:
            groups = m.groupdict()
            break
    if groups is None:
        m = _GENERIC.match(text)
        if m is None:
            # No severity marker at all (a line some other writer produced): still an audit
            # entry if the message is there.
            at = text.find(_AUDIT)
            if at >= 0:
                entry.message = text[at:]
                entry.fields = {"message": entry.message}
                entry.broken = True
            return entry
        prefix = m.group("prefix")
        found_time = _GENERIC_TIME.search(prefix)
        users = list(_GENERIC_USER_DB.finditer(prefix))
        found_user = users[-1] if users else None  # the last user@db before the severity
        groups = {
            "time": found_time.group(0) if found_time else None,
            "user": found_user.group(1) if found_user else None,
            "database": found_user.group(2) if found_user else None,
            "severity": m.group("severity"),
            "message": m.group("message"),
        }
    entry.fields = {k: v for k, v in groups.items() if v is not None}
    entry.message = groups.get("message")
    if groups.get("time"):
        entry.time_text = groups["time"]
        entry.time_ns = _time_ns(entry.time_text)
    elif groups.get("epoch"):
        entry.time_text = groups["epoch"]
        entry.time_ns = _epoch_ns(entry.time_text)
    entry.user = _identity(groups.get("user"))
    entry.database = _identity(groups.get("database"))
    entry.client = _client(groups.get("host") or groups.get("remote"), port_in_value=False)
    return entry


def _csv_entry(text: str) -> _Entry:
    entry = _Entry()
    values, complete = _split_csv(text)
    entry.broken = not complete or len(values) < _CSV_MIN_COLUMNS
    entry.fields = dict(zip(CSVLOG_COLUMNS, values, strict=False))
    entry.message = entry.fields.get("message")
    entry.time_text = entry.fields.get("log_time") or None
    entry.time_ns = _time_ns(entry.time_text)
    entry.user = _identity(entry.fields.get("user_name"))
    entry.database = _identity(entry.fields.get("database_name"))
    entry.client = _client(entry.fields.get("connection_from"), port_in_value=True)
    return entry


def _partial_json_message(text: str) -> str | None:
    """The "message" string of a broken line, or its beginning if the line ends inside it."""
    m = _JSON_MESSAGE.search(text)
    if m is None:
        return None
    partial = m.group(1)
    for cut in range(min(6, len(partial) + 1)):  # drop a half-written escape (\, \u12, …)
        try:
            value = orjson.loads(f'"{partial[: len(partial) - cut]}"')
        except orjson.JSONDecodeError:
            continue
        return value if isinstance(value, str) else None
    return None


def _json_entry(text: str) -> _Entry:
    entry = _Entry()
    decoded = decode_json_object(text)
    obj = decoded.obj
    entry.json_cut = decoded.cut
    entry.broken = decoded.malformed
    entry.fields = obj
    message = obj.get("message")
    if message is None and (decoded.cut or decoded.malformed):
        message = _partial_json_message(text)  # an audit line in broken JSON is still one
    entry.message = message if isinstance(message, str) else None
    stamp = obj.get("timestamp")
    if stamp is not None:
        # Not a string: no time, but a written one (invalid_field:time). Never str() of an
        # object or array: a deeply nested one would exhaust the recursion limit.
        entry.time_text = stamp if isinstance(stamp, str) else "?"
        entry.time_ns = _time_ns(stamp) if isinstance(stamp, str) else None
    entry.user = _identity(obj.get("user"))
    entry.database = _identity(obj.get("dbname"))
    host = obj.get("remote_host")
    entry.client = _client(host if isinstance(host, str) else None, port_in_value=False)
    return entry


def _record(first: int, text: str, last_size: int, fmt: str, entry: _Entry) -> AuditRecord:
    assert entry.message is not None
    values, complete = _split_csv(entry.message[len(_AUDIT):])
    audit: dict[str, str] = dict(zip(_AUDIT_FIELDS, values, strict=False))
    statement_id, substatement_id = (_int(audit.get("statement_id")),
                                     _int(audit.get("substatement_id")))
    payload_ok = (complete and len(values) >= _MIN_AUDIT_FIELDS
                  and statement_id is not None and substatement_id is not None)

    command = audit.get("command") or None
    object_name = audit.get("object_name") or None
    object_type = audit.get("object_type") or None
    statement = audit.get("statement")
    parameter = audit.get("parameter")
    rows = _int(audit.get("rows"))
    unparsed: list[str] = []
    # Range checks (processor.grammar.ranges): an id or count beyond int64 cannot be exported.
    if statement_id is not None and not ranges.size_ok(statement_id):
        statement_id, payload_ok = None, False
    if substatement_id is not None and not ranges.size_ok(substatement_id):
        substatement_id, payload_ok = None, False
    if rows is not None and not ranges.size_ok(rows):
        rows = None
        unparsed.append("rows")
    time_ns = entry.time_ns
    if time_ns is not None and not ranges.time_ok(time_ns):
        time_ns = None
    if entry.time_text and time_ns is None:
        unparsed.insert(0, "time")

    attributes: dict[str, str | int | float | bool] = {"db.system.name": "postgresql"}
    if command:
        attributes["db.operation.name"] = command
    if object_name:
        attributes["db.collection.name"] = object_name
    if statement is not None and statement != _PREVIOUSLY_LOGGED:
        attributes["db.query.text"] = statement
    if entry.database:
        attributes["db.namespace"] = entry.database
    for key, value in (("audit_type", audit.get("audit_type")), ("class", audit.get("class"))):
        if value:
            attributes[f"pgaudit.{key}"] = value
    if statement_id is not None:
        attributes["pgaudit.statement_id"] = statement_id
    if substatement_id is not None:
        attributes["pgaudit.substatement_id"] = substatement_id
    if object_type:
        attributes["pgaudit.object_type"] = object_type
    if parameter is not None and parameter not in _NO_PARAMETER:
        attributes["pgaudit.parameter"] = parameter
    if rows is not None:
        attributes["pgaudit.rows"] = rows

    record = AuditRecord(
        SOURCE,
        time_unix_nano=time_ns,
        user_id=entry.user,
        client_address=entry.client,
        traceparent=sqlcomment_traceparent(statement) if statement else None,
        name=f"{command} {object_name}" if command and object_name else command,
        attributes=attributes,
        fields={**entry.fields, "audit": audit},
        unparsed=tuple(unparsed),
        raw=text,
        line=first,
    )
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
    regexes = (prefix_regex(log_line_prefix),) if log_line_prefix else _COMMON_REGEXES
    records = []
    for first, text, last_size in _entries(lines, fmt):
        if _AUDIT not in text:  # cheap: most entries of a busy log are not audit lines
            continue
        if fmt == "stderr":
            entry = _stderr_entry(text, regexes)
        elif fmt == "csvlog":
            entry = _csv_entry(text)
        else:
            entry = _json_entry(text)
        if entry.message is None or not entry.message.startswith(_AUDIT):
            continue
        records.append(_record(first, text, last_size, fmt, entry))
    return RecordBatch.from_records(SOURCE, records)
