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
   of canonical field → JMESPath expression for any other layout, nested keys included
   (audit_guard.sources.app_fields: the mapping and how raw values are converted).

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

import re
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from .. import flags
from ..grammar import timestamps
from ..record import AuditRecord, RecordBatch
from .app_fields import CANONICAL_FIELDS, FieldMapping, Row, parse_request_message
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

# Dify's default text LOG_FORMAT; asctime with LOG_DATEFORMAT "%Y-%m-%d %H:%M:%S" (Docker's
# .env) or unset (Python's "%Y-%m-%d %H:%M:%S,mmm"). An empty trace id leaves "]  - ".
_TEXT_LINE = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<clock>\d{2}:\d{2}:\d{2})(?:,\d{3})?\.(?P<msecs>\d{3})"
    r" (?P<levelname>[A-Z]+) \[(?P<threadName>[^\]]*)\] \[(?P<filename>[^\]]*):(?P<lineno>\d+)\]"
    r" (?P<trace_id>\S*) - (?P<message>.*)",
    re.S,
)

# A line number has at most 18 digits (range-checked: an int64 attribute).
_CALLER = re.compile(r"(?P<file>[^:]+):(?P<line>\d{1,18})")


# -- one record ------------------------------------------------------------------------------


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


def _from_dify(row: Row, obj: dict[str, Any], local_tz: tzinfo | None) -> None:
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


def _from_generic(row: Row, obj: dict[str, Any], skip: Mapping[str, Any],
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
) -> Row:
    row = Row(obj)
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


def _from_text(m: re.Match[str], local_tz: tzinfo | None) -> Row:
    groups = m.groupdict()
    row = Row(groups)
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
) -> tuple[Row, str | None]:
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
    return Row({}), flags.MALFORMED


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
            row, problem = Row({}), flags.MALFORMED
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
