"""An app-log record's fields: the canonical field names, the operator's `FieldMapping`
(canonical field → JMESPath expression), the conversion of raw values (times, durations, ids,
paths, statuses: range-checked, never raising), and Dify's request-log message. Used by
audit_guard.sources.app.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from jmespath.exceptions import JMESPathError

from ..grammar import ranges, timestamps
from ..grammar.jmes import Evaluator, ExpressionError, compile_expression
from .columns import text, to_int

# The fields a FieldMapping may fill. `trace_id` is a request id of lower rank (used when no
# `request_id` is found); `duration_ms` is in milliseconds; `time` is ISO 8601 or epoch seconds.
CANONICAL_FIELDS = (
    "time", "method", "path", "status", "user_id", "app_id", "request_id", "trace_id",
    "traceparent", "duration_ms", "client_address", "server_address", "user_agent",
)

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

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
# Fields holding an id: range-checked (audit_guard.grammar.ranges.id_ok).
_IDS = frozenset({"request_id", "trace_id", "traceparent"})
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


class Row:
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

