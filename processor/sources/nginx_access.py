"""Nginx JSON access-log records → AuditRecord.

Operators name their log_format keys many ways: after nginx variables (`request_method`,
`request_uri`, `msec`, `http_x_user_id`), or short (`method`, `path`, `ip`). Values may be
strings (escape=json quotes everything it is given quoted) or numbers. This module accepts all
of those; which source key fills which audit field is decided once per distinct key layout
(log lines of one log_format share it) and cached, so the per-record work is a few dict reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .. import flags
from ..record import AuditRecord
from .jsonline import decode_json_object

__all__ = ["SOURCE", "parse_line", "parse_mapping"]

SOURCE = "nginx"

# canonical field → accepted source keys, best first.
ALIASES: dict[str, tuple[str, ...]] = {
    "method": ("request_method", "method", "http_method", "verb"),
    "request_uri": ("request_uri", "url", "request_url"),
    "path": ("uri", "path", "request_path", "document_uri"),
    "status": ("status", "status_code", "response_status", "http_status"),
    "msec": ("msec", "timestamp_msec", "epoch"),
    "time": ("time_iso8601", "time", "timestamp", "@timestamp", "ts", "time_local"),
    "request_time": ("request_time", "duration", "request_duration", "rt"),
    "client_address": ("remote_addr", "ip", "client_ip", "client", "client_address"),
    "user_id": (
        "user_id", "http_x_user_id", "upstream_http_x_audit_user_id", "upstream_http_x_user_id",
        "x_user_id", "userid", "uid",
    ),
    "app_id": (
        "app_id", "http_x_app_id", "upstream_http_x_audit_app_id", "upstream_http_x_app_id",
        "x_app_id", "appid",
    ),
    "request_id": ("request_id", "http_x_request_id", "x_request_id", "req_id", "requestid"),
    "traceparent": ("http_traceparent", "traceparent"),
    "server_address": ("host", "http_host", "server_name", "server"),
    "user_agent": ("http_user_agent", "user_agent", "agent", "ua"),
    "request_completion": ("request_completion", "completion"),
    "body_bytes_sent": ("body_bytes_sent", "bytes_sent_body", "response_body_size"),
    "bytes_sent": ("bytes_sent",),
    "sent_content_length": ("sent_http_content_length", "content_length_sent"),
    "sent_content_encoding": ("sent_http_content_encoding",),
    "gzip_ratio": ("gzip_ratio",),
    "upstream_status": ("upstream_status",),
    "upstream_response_length": ("upstream_response_length",),
    "upstream_bytes_received": ("upstream_bytes_received",),
    "connection": ("connection",),
    "connection_requests": ("connection_requests",),
}
_RANK = {key: (canon, rank) for canon, keys in ALIASES.items() for rank, key in enumerate(keys)}
_CANON = tuple(ALIASES)

# Key layout → the source key of each canonical field, in _CANON order (None: not logged).
# Lines of one log_format share a layout, so this is worked out once per format, and the
# per-record extraction is one C-level `map(obj.get, plan)`.
_PLANS: dict[tuple[str, ...], tuple[str | None, ...]] = {}
_MAX_PLANS = 256


def _plan(keys: tuple[str, ...]) -> tuple[str | None, ...]:
    best: dict[str, tuple[int, str]] = {}
    for key in keys:
        hit = _RANK.get(key) or _RANK.get(key.lower())
        if hit is not None:
            canon, rank = hit
            if canon not in best or rank < best[canon][0]:
                best[canon] = (rank, key)
    plan = tuple(best[c][1] if c in best else None for c in _CANON)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[keys] = plan
    return plan


def canonical_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The record's fields under their canonical names (for replay output and debugging)."""
    keys = tuple(obj)
    plan = _PLANS.get(keys) or _plan(keys)
    return {c: obj[k] for c, k in zip(_CANON, plan, strict=True) if k is not None}


def _text(value: Any) -> str | None:
    """nginx logs a variable without value as "" (escape=json) or "-" (default escaping)."""
    if value.__class__ is str:
        return None if value == "" or value == "-" else value
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = _text(value)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _last_int(value: Any) -> int | None:
    """$upstream_* hold one value per attempt ("10, 20 : 30"); the last one reached the client."""
    if isinstance(value, str) and ("," in value or ":" in value):
        value = value.replace(" : ", ",").rsplit(",", 1)[-1].strip()
    return _int(value)


def _seconds_to_ns(value: Any) -> int | None:
    """$msec / $request_time ("1764165600.123", seconds with ms) → ns.

    Via float, rounded to the microsecond: exact for these millisecond values (a float64
    holds 15+ significant digits), and much cheaper than decimal parsing on the hot path.
    """
    if value.__class__ is str:
        try:
            return round(float(value) * 1_000_000) * 1000
        except ValueError:
            return None
    if value.__class__ is int or value.__class__ is float:
        return round(value * 1_000_000) * 1000
    return None


def _iso_to_ns(value: Any) -> int | None:
    text = _text(value)
    if text is None:
        return None
    try:
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        return int(datetime.fromisoformat(text).timestamp() * 1_000_000) * 1000
    except ValueError:
        pass
    try:  # $time_local: 26/Nov/2026:14:00:00 +0000
        return int(datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()) * 1_000_000_000
    except ValueError:
        return None


def parse_line(line: bytes | str) -> AuditRecord:
    """One access-log line (the collector's log body) → AuditRecord, never raising."""
    decoded = decode_json_object(line)
    record = parse_mapping(decoded.obj)
    record.raw = line
    if decoded.cut:
        record.truncation_reasons.append(flags.JSON_CUT)
    elif decoded.malformed:
        record.add_flag(flags.MALFORMED)
    return record


def parse_mapping(obj: dict[str, Any]) -> AuditRecord:
    """A decoded access-log object (or the collector's parsed attributes) → AuditRecord."""
    keys = tuple(obj)
    plan = _PLANS.get(keys) or _plan(keys)
    (
        method, request_uri, path, status, msec, time_text, request_time, client, user_id,
        app_id, request_id, traceparent, server, user_agent, completion, body_bytes_sent,
        _bytes_sent, content_length, content_encoding, gzip_ratio, _upstream_status,
        upstream_length, _upstream_received, _connection, _connection_requests,
    ) = map(obj.get, plan)

    unparsed: list[str] = []
    method = _text(method)
    target = _text(request_uri) or _text(path)
    status_code = _int(status)
    if status_code is None and _text(status) is not None:
        unparsed.append("status")
    end = _seconds_to_ns(msec)
    if end is None and time_text is not None:
        end = _iso_to_ns(time_text)
    if end is None and (_text(msec) is not None or _text(time_text) is not None):
        unparsed.append("time")
    duration = _seconds_to_ns(request_time)
    return AuditRecord(
        source=SOURCE,
        time_unix_nano=end,
        duration_ns=duration if duration is not None and duration > 0 else 0,
        method=method.upper() if method is not None else None,
        path=target.split("?", 1)[0] if target is not None else None,
        status=status_code,
        user_id=_text(user_id),
        app_id=_text(app_id),
        request_id=_text(request_id),
        traceparent=_text(traceparent),
        client_address=_text(client),
        server_address=_text(server),
        user_agent=_text(user_agent),
        body_bytes_sent=_int(body_bytes_sent),
        # Only when the format logs it: a format without $request_completion proves nothing.
        completed=None if plan[_COMPLETION] is None else _text(completion) is not None,
        content_length=_int(content_length),
        upstream_length=_last_int(upstream_length),
        compressed=_text(content_encoding) is not None or _text(gzip_ratio) is not None,
        unparsed=tuple(unparsed),
        fields=obj,
    )


_COMPLETION = _CANON.index("request_completion")
