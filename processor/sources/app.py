"""Application audit-log lines (source "app") → audit records (a RecordBatch).

The app behind nginx writes its own account of each request. Three line shapes are read, told
apart per line (one file may mix them, e.g. after LOG_OUTPUT_FORMAT was switched):

1. **Dify JSON** (`LOG_OUTPUT_FORMAT=json`, Dify's `core/logging/structured_formatter.py`):
   `{"ts", "severity", "service", "caller", "message", "trace_id"?, "span_id"?,
   "identity"?: {"tenant_id", "user_id", "user_type"}, "attributes"?, "stack_trace"?}`.
   With `ENABLE_REQUEST_LOGGING=true` Dify logs one line per request whose message is
   `"%s %s %s %s %s" % (method, path, status, duration_ms, trace_id)`
   (`extensions/ext_request_logging.py`); that message gives method, path, status, duration and
   the request id. Other Dify lines still become records (they carry who and when), and our demo
   upstream also puts `app_id`, `method`, `path`, `status` into `attributes`, used as fallback.
2. **Dify text** (the default `LOG_FORMAT`): `%(asctime)s.%(msecs)03d %(levelname)s
   [%(threadName)s] [%(filename)s:%(lineno)d] %(trace_id)s - %(message)s`, with the same
   request-log message. `asctime` is `2025-11-26 14:00:00` with Docker's
   `LOG_DATEFORMAT=%Y-%m-%d %H:%M:%S`, and `2025-11-26 14:00:00,123` when LOG_DATEFORMAT is
   unset (Python's default, so the milliseconds appear twice: `…,123.123`); both are read. The
   time carries no zone: Dify renders it in `LOG_TZ` (default UTC), so it is read as UTC unless
   `local_tz` says otherwise. A multi-line message (traceback, DEBUG body dump) continues on
   lines of no format: those become `malformed` rows.
3. **Generic JSON audit lines**: common key spellings (see `GENERIC_KEYS`), or a `FieldMapping`
   of canonical field → JMESPath expression for any other layout, nested keys included.

The request id: the trace id of the request-log message when there is one (it is Dify's
OpenTelemetry trace id, which is nginx's `$request_id` when nginx sends the shipped
`traceparent`), else the line's `trace_id` key when it is 32 hex chars; the correlator then
puts the app record into nginx's trace. `traceparent` and the span `name` are left to the
correlator and the span builder.

A line that is neither JSON nor the text format is a `malformed` row with its raw text; a JSON
line cut mid-write is salvaged (every complete top-level member) and gets the truncation reason
`json_cut`. `parse_lines` never raises. Regexes and JMESPath expressions are compiled once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from jmespath.exceptions import JMESPathError

from .. import flags
from ..grammar import ranges, timestamps
from ..grammar.jmes import Evaluator, ExpressionError, compile_expression
from ..record import AuditRecord, RecordBatch
from .columns import text, to_int
from .jsonline import decode_json_object, mark_decoding

__all__ = [
    "CANONICAL_FIELDS",
    "GENERIC_KEYS",
    "SOURCE",
    "FieldMapping",
    "parse_line",
    "parse_lines",
    "parse_request_message",
]

SOURCE = "app"

# The fields a FieldMapping may fill. `trace_id` is a request id of lower rank (used when no
# `request_id` is found); `duration_ms` is in milliseconds; `time` is ISO 8601 or epoch seconds.
CANONICAL_FIELDS = (
    "time", "method", "path", "status", "user_id", "app_id", "request_id", "trace_id",
    "traceparent", "duration_ms", "client_address", "server_address", "user_agent",
)

# Generic JSON: canonical field → accepted top-level keys, first found wins.
GENERIC_KEYS: dict[str, tuple[str, ...]] = {
    "time": ("time", "timestamp", "@timestamp", "ts", "time_iso8601", "datetime"),
    "method": ("method", "request_method", "http_method", "verb"),
    "path": ("path", "request_uri", "uri", "url", "request_path"),
    "status": ("status", "status_code", "http_status", "response_status"),
    "user_id": ("user_id", "userId", "uid", "user"),
    "app_id": ("app_id", "appId", "app"),
    "request_id": ("request_id", "requestId", "x_request_id", "req_id"),
    "trace_id": ("trace_id", "traceId"),
    "traceparent": ("traceparent",),
    "duration_ms": ("duration_ms", "latency_ms", "elapsed_ms"),
    "client_address": ("client_address", "client_ip", "remote_addr", "ip"),
    "server_address": ("server_address", "host"),
    "user_agent": ("user_agent", "http_user_agent"),
}

# Dify's request-log message: "%s %s %s %s %s" % (request.method, request.path,
# response.status_code, round(ms, 3) or "-", otel trace id or X-Trace-Id header or "").
# Without a request context method and path are "-". The path is Flask's decoded request.path
# and may hold spaces, so it is whatever lies between the method and the last three fields. The
# method must be an upper-case token and the path start with "/" so ordinary messages that merely
# end in two numbers are not taken for request lines. An empty trace id leaves a trailing space.
_REQUEST_MESSAGE = re.compile(
    r"(?P<method>[A-Z][A-Z0-9_-]*|-) (?P<path>/.*|-) (?P<status>\d{3}|-)"
    r" (?P<duration>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-)(?: (?P<trace>[A-Za-z0-9_-]{1,128}))? ?",
    re.S,
)

# Dify's default text LOG_FORMAT; asctime with LOG_DATEFORMAT "%Y-%m-%d %H:%M:%S" (Docker's
# .env) or unset (Python's "%Y-%m-%d %H:%M:%S,mmm"). An empty trace id leaves "]  - ".
_TEXT_LINE = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<clock>\d{2}:\d{2}:\d{2})(?:,\d{3})?\.(?P<msecs>\d{3})"
    r" (?P<levelname>[A-Z]+) \[(?P<threadName>[^\]]*)\] \[(?P<filename>[^\]]*):(?P<lineno>\d+)\]"
    r" (?P<trace_id>\S*) - (?P<message>.*)",
    re.S,
)

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
# Fields holding an id: range-checked (processor.grammar.ranges.id_ok).
_IDS = frozenset({"request_id", "trace_id", "traceparent"})
# A line number has at most 18 digits (range-checked: an int64 attribute).
_CALLER = re.compile(r"(?P<file>[^:]+):(?P<line>\d{1,18})")
# A JMESPath expression that is one bare key with characters an identifier may not hold
# (`@timestamp`, `user-id`): the error message suggests quoting it.
_PLAIN_KEY = re.compile(r"[^.\[\]{}()|&!<>=,*`'\"\s]+")
# Epoch numbers above this are milliseconds (as seconds it would be the year 5138).
_EPOCH_MS_FROM = 100_000_000_000


# -- field mapping ---------------------------------------------------------------------------


class FieldMapping:
    """Canonical field → JMESPath expression, compiled once, applied to each JSON record.

    A mapped field is read ONLY through its expression: a record where it yields nothing has
    the field missing (and flagged so), rather than quietly filled from a default key that may
    mean something else. Unmapped fields keep the default extraction.
    """

    __slots__ = ("expressions", "_compiled")

    def __init__(self, mapping: Mapping[str, str]) -> None:
        compiled: list[tuple[str, Evaluator]] = []
        for field, expression in mapping.items():
            if field not in CANONICAL_FIELDS:
                raise ValueError(
                    f"field mapping: unknown field {field!r}; "
                    f"expected one of {', '.join(CANONICAL_FIELDS)}"
                )
            if not isinstance(expression, str):
                raise ValueError(
                    f"field mapping {field!r}: the JMESPath expression must be a string "
                    f"(got {expression!r})"
                )
            try:
                compiled.append((field, compile_expression(expression).evaluate))
            except ExpressionError as exc:
                raise ValueError(_compile_error(field, expression, exc)) from None
        self.expressions: dict[str, str] = dict(mapping)
        self._compiled = tuple(compiled)

    def __repr__(self) -> str:
        return f"FieldMapping({self.expressions!r})"

    def apply(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The mapped fields of one record: ({field: value found}, [fields whose expression
        failed at run time, e.g. a function given the wrong type])."""
        found: dict[str, Any] = {}
        failed: list[str] = []
        for field, evaluate in self._compiled:
            try:
                found[field] = evaluate(obj)
            except JMESPathError:
                failed.append(field)
        return found, failed


def _compile_error(field: str, expression: str, exc: ExpressionError) -> str:
    message = f"field mapping {field!r}: invalid JMESPath expression {expression!r} {exc}"
    if expression and _PLAIN_KEY.fullmatch(expression):
        quoted = '"' + expression.replace("\\", "\\\\").replace('"', '\\"') + '"'
        message += f"; a key with such characters must be quoted in JMESPath: {quoted!r}"
    return message


# -- value conversions -----------------------------------------------------------------------


def _written(value: Any) -> bool:
    """A value is there (an object or array counts: a wrong type, not an absent field)."""
    return isinstance(value, dict | list) or text(value) is not None


def _scalar_text(value: Any) -> tuple[str | None, bool]:
    """(text, ok): objects and arrays are not ids; ok=False marks the field unparsed."""
    if isinstance(value, dict | list):
        return None, False
    return text(value), True


def _time_ns(value: Any, local_tz: tzinfo | None) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number: float | int = value
    elif isinstance(value, str):
        parsed = timestamps.iso8601_ns(value, local_tz)
        if parsed is None:
            parsed = timestamps.epoch_seconds_ns(value)  # exact: every digit kept
        if parsed:  # the epoch itself is no real event time, whichever way it is written
            return parsed
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number) or number <= 0:  # NaN/inf, or no real event time
        return None
    if number >= _EPOCH_MS_FROM:
        number = number / 1000
    ns = round(number * 1_000_000) * 1000
    return ns if ranges.time_ok(ns) else None


def _duration_ns(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        ns = round(value * 1_000_000)  # ms → ns, rounded at the ns
        return ns if ranges.duration_ok(ns) else None
    return None


def _path_of(target: str) -> str:
    """Request target → path: the query stripped, an absolute URL reduced to its path."""
    if target.startswith(("http://", "https://")):
        slash = target.find("/", target.find("//") + 2)
        target = target[slash:] if slash >= 0 else "/"
    return target.partition("?")[0]


# -- one record ------------------------------------------------------------------------------


class _Row:
    """The normalized values of one record, filled field by field."""

    __slots__ = (
        "time_unix_nano", "duration_ns", "method", "path", "status", "user_id", "app_id",
        "request_id", "trace_id", "traceparent", "client_address", "server_address",
        "user_agent", "unparsed", "attributes", "fields",
    )

    def __init__(self, fields: dict[str, Any]) -> None:
        self.time_unix_nano: int | None = None
        self.duration_ns = 0
        self.method: str | None = None
        self.path: str | None = None
        self.status: int | None = None
        self.user_id: str | None = None
        self.app_id: str | None = None
        self.request_id: str | None = None
        self.trace_id: str | None = None  # ranks below request_id
        self.traceparent: str | None = None
        self.client_address: str | None = None
        self.server_address: str | None = None
        self.user_agent: str | None = None
        self.unparsed: list[str] = []
        self.attributes: dict[str, str | int | float | bool] | None = None
        self.fields = fields

    def set(self, field: str, value: Any, local_tz: tzinfo | None) -> None:
        """Set one canonical field from a raw value; None/""/"-" clear it."""
        if field == "time":
            ns = _time_ns(value, local_tz) if value is not None else None
            if ns is None and _written(value):
                self.unparsed.append("time")
            self.time_unix_nano = ns
        elif field == "status":
            code = to_int(value) if not isinstance(value, bool) else None
            if code is not None and not ranges.status_ok(code):
                code = None
            if code is None and _written(value):
                self.unparsed.append("status")
            self.status = code
        elif field == "duration_ms":
            ns = _duration_ns(value) if value is not None else None
            if ns is None and _written(value):
                self.unparsed.append("duration")
            self.duration_ns = ns or 0
        else:
            value_text, ok = _scalar_text(value)
            if ok and value_text is not None and field in _IDS and not ranges.id_ok(value_text):
                value_text, ok = None, False
            if not ok:
                self.unparsed.append(field)
            if field == "method":
                self.method = value_text.upper() if value_text is not None else None
            elif field == "path":
                self.path = _path_of(value_text) if value_text is not None else None
            else:
                setattr(self, field, value_text)

    def request_log(self, message: Any, trace_id: Any) -> None:
        """Fill method/path/status/duration from a request-log message, and the request id:
        the message's trace id, else the line's `trace_id` when it is 32 hex chars.

        The message's trace id is the OpenTelemetry one (or the caller's X-Trace-Id); Dify's
        `trace_id` falls back to a random per-request id when OTel is off, which joins nothing,
        so the message wins."""
        parts = parse_request_message(message) if isinstance(message, str) else None
        if parts is not None:
            self.method, self.path, self.status, duration_ns, trace = parts
            self.duration_ns = duration_ns or 0
            if trace is not None:
                self.request_id = trace
                return
        if isinstance(trace_id, str) and _HEX32.fullmatch(trace_id):
            self.request_id = trace_id.lower()


def parse_request_message(
    message: str,
) -> tuple[str | None, str | None, int | None, int | None, str | None] | None:
    """Dify's request-log message → (method, path, status, duration_ns, trace_id), or None
    when the message is not one. "-" and an empty trace id become None."""
    m = _REQUEST_MESSAGE.fullmatch(message.strip("\r\n"))
    if m is None:
        return None
    method = m.group("method")
    path = m.group("path")
    status = m.group("status")
    duration = m.group("duration")
    return (
        None if method == "-" else method,
        None if path == "-" else _path_of(path),
        None if status == "-" else int(status),
        None if duration == "-" else _duration_ns(duration),
        m.group("trace") or None,
    )


def _is_dify(obj: dict[str, Any]) -> bool:
    # `ts` + `severity` are the first two keys Dify's formatter writes, so a cut line has them
    # too; a generic audit line with a `ts` key rarely has a `severity` or `caller`.
    return "ts" in obj and ("severity" in obj or "caller" in obj)


def _dify_attributes(obj: dict[str, Any], identity: Any) -> dict[str, Any] | None:
    attrs: dict[str, Any] = {}
    if isinstance(identity, dict):
        for key, name in (("tenant_id", "dify.tenant_id"), ("user_type", "dify.user_type")):
            value = identity.get(key)
            if isinstance(value, str) and value:
                attrs[name] = value
    severity = obj.get("severity")
    if isinstance(severity, str) and severity:
        attrs["log.severity"] = severity
    service = obj.get("service")
    if isinstance(service, str) and service:
        attrs["dify.service"] = service
    caller = obj.get("caller")
    if isinstance(caller, str) and caller:
        # Dify writes `record.filename:record.lineno` (a base name, not a path): OpenTelemetry's
        # code.file.path / code.line.number say the same; anything else is kept as written.
        m = _CALLER.fullmatch(caller)
        if m is not None:
            attrs["code.file.path"] = m.group("file")
            attrs["code.line.number"] = int(m.group("line"))
        else:
            attrs["dify.caller"] = caller
    return attrs or None


def _from_dify(row: _Row, obj: dict[str, Any], local_tz: tzinfo | None) -> None:
    ts = obj.get("ts")
    row.set("time", ts, local_tz)
    identity = obj.get("identity")
    if isinstance(identity, dict):
        row.set("user_id", identity.get("user_id"), local_tz)
    attributes = obj.get("attributes")
    if isinstance(attributes, dict):
        # Dify itself logs no app id; our demo upstream (and operators' own `extra=`) put it here.
        for field in ("app_id", "method", "path", "status"):
            if field in attributes:
                row.set(field, attributes[field], local_tz)
    row.request_log(obj.get("message"), obj.get("trace_id"))
    row.attributes = _dify_attributes(obj, identity)


def _from_generic(row: _Row, obj: dict[str, Any], skip: Mapping[str, Any],
                  local_tz: tzinfo | None) -> None:
    get = obj.get
    for field, keys in GENERIC_KEYS.items():
        if field in skip:
            continue
        for key in keys:
            value = get(key)
            if value is not None and value != "" and value != "-":
                row.set(field, value, local_tz)
                break


def _from_json(
    obj: dict[str, Any], mapping: FieldMapping | None, local_tz: tzinfo | None,
) -> _Row:
    row = _Row(obj)
    mapped: dict[str, Any] = {}
    failed: list[str] = []
    if mapping is not None:
        mapped, failed = mapping.apply(obj)
    if _is_dify(obj):
        _from_dify(row, obj, local_tz)
        for field in mapped:  # a mapped field replaces what the Dify layout gave
            row.set(field, None, local_tz)
    else:
        _from_generic(row, obj, mapped, local_tz)
    for field, value in mapped.items():
        row.set(field, value, local_tz)
    for field in failed:
        row.set(field, None, local_tz)
        row.unparsed.append(field)
    if row.request_id is None and row.trace_id is not None:
        row.request_id = row.trace_id
    return row


def _from_text(m: re.Match[str], local_tz: tzinfo | None) -> _Row:
    groups = m.groupdict()
    row = _Row(groups)
    date, clock = groups["date"], groups["clock"]
    row.time_unix_nano = timestamps.civil_ns(
        int(date[0:4]), int(date[5:7]), int(date[8:10]),
        int(clock[0:2]), int(clock[3:5]), int(clock[6:8]),
        int(groups["msecs"]) * 1_000_000, None, local_tz)
    if row.time_unix_nano is None:
        row.unparsed.append("time")
    row.request_log(groups["message"], groups["trace_id"])
    attrs: dict[str, str | int | float | bool] = {"log.severity": groups["levelname"],
                                                  "code.file.path": groups["filename"]}
    if len(groups["lineno"]) <= 18:  # range-checked: an int64 attribute
        attrs["code.line.number"] = int(groups["lineno"])
    row.attributes = attrs
    return row


def _parse(
    line: bytes | str, mapping: FieldMapping | None, local_tz: tzinfo | None,
) -> tuple[_Row, str | None]:
    """One line → (row, problem): problem is None, flags.JSON_CUT or flags.MALFORMED."""
    head = line.lstrip()[:1]
    if head in (b"{", "{"):
        decoded = decode_json_object(line)
        row = _from_json(decoded.obj, mapping, local_tz)
        if decoded.cut:
            return row, flags.JSON_CUT
        return row, flags.MALFORMED if decoded.malformed else None
    line_text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    m = _TEXT_LINE.fullmatch(line_text.strip("\r\n"))
    if m is not None:
        return _from_text(m, local_tz), None
    return _Row({}), flags.MALFORMED


# -- batches ---------------------------------------------------------------------------------

_ROW_COLUMNS = (
    "time_unix_nano", "duration_ns", "method", "path", "status", "user_id", "app_id",
    "request_id", "traceparent", "client_address", "server_address", "user_agent",
    "attributes", "fields",
)


def parse_lines(
    lines: list[str | bytes],
    mapping: FieldMapping | None = None,
    *,
    local_tz: tzinfo | None = None,
) -> RecordBatch:
    """App-log lines → RecordBatch of source "app", one row per line, never raising.

    `mapping` reads JSON records of other layouts (see FieldMapping). `local_tz` is the zone of
    times written without one (Dify's text format: its LOG_TZ); None means UTC.
    """
    n = len(lines)
    columns: dict[str, list[Any]] = {name: [None] * n for name in _ROW_COLUMNS}
    unparsed: list[tuple[str, ...]] = [()] * n
    cut: list[int] = []
    malformed: list[int] = []
    for i, line in enumerate(lines):
        try:
            row, problem = _parse(line, mapping, local_tz)
        except Exception:  # a line that breaks the parser is still a record, never a crash
            row, problem = _Row({}), flags.MALFORMED
        for name in _ROW_COLUMNS:
            columns[name][i] = getattr(row, name)
        if row.unparsed:
            unparsed[i] = tuple(dict.fromkeys(row.unparsed))
        if problem == flags.JSON_CUT:
            cut.append(i)
        elif problem is not None:
            malformed.append(i)
    batch = RecordBatch(SOURCE, n, unparsed=unparsed, raw=list(lines), **columns)
    mark_decoding(batch, cut, malformed)
    return batch


def parse_line(
    line: str | bytes, mapping: FieldMapping | None = None, *, local_tz: tzinfo | None = None,
) -> AuditRecord:
    return parse_lines([line], mapping, local_tz=local_tz).row(0)
