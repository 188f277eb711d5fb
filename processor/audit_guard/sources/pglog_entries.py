"""What one PostgreSQL log entry's container says — the `log_line_prefix` of a stderr entry
(as a regex), the columns of a csvlog record, the keys of a jsonlog object — as an `Entry`: time,
user, database, client and message. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from ..grammar import timestamps
from .jsonline import decode_json_object
from .pglog_lines import CSV_MIN_COLUMNS, CSVLOG_COLUMNS, split_csv

# log_line_prefix values seen in the wild, tried in order when none is given: Debian's
# default, PostgreSQL's default, the pgBadger recommendations, Amazon RDS's fixed prefix.
COMMON_PREFIXES = (
    "%m [%p] %q%u@%d ",
    "%m [%p] ",
    "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: user=%u,db=%d,app=%a,client=%h ",
    "%t:%r:%u@%d:[%p]:",
)

AUDIT_PREFIX = "AUDIT: "  # an audit entry's message starts so

# Timestamps as PostgreSQL prints them (%m, %t, log_time, timestamp): see
# audit_guard.grammar.timestamps.postgres_ns.
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
_JSON_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)', re.S)


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


COMMON_REGEXES = tuple(prefix_regex(p) for p in COMMON_PREFIXES)


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


# --- entries ---------------------------------------------------------------------------------


class Entry:
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


def stderr_entry(text: str, regexes: Sequence[re.Pattern[str]]) -> Entry:
    entry = Entry()
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
            at = text.find(AUDIT_PREFIX)
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


def csv_entry(text: str) -> Entry:
    entry = Entry()
    values, complete = split_csv(text)
    entry.broken = not complete or len(values) < CSV_MIN_COLUMNS
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


def json_entry(text: str) -> Entry:
    entry = Entry()
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

