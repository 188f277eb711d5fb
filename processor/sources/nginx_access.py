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

# Key layout → [(canonical, source key)]; bounded because layouts are few (one per log_format).
_PLANS: dict[tuple[str, ...], list[tuple[str, str]]] = {}
_MAX_PLANS = 256


def _plan(keys: tuple[str, ...]) -> list[tuple[str, str]]:
    best: dict[str, tuple[int, str]] = {}
    for key in keys:
        hit = _RANK.get(key) or _RANK.get(key.lower())
        if hit is not None:
            canon, rank = hit
            if canon not in best or rank < best[canon][0]:
                best[canon] = (rank, key)
    plan = [(canon, key) for canon, (_, key) in best.items()]
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[keys] = plan
    return plan


def _text(value: Any) -> str | None:
    """nginx logs a variable without value as "" (escape=json) or "-" (default escaping)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return str(value)
    return None if value == "" or value == "-" else value


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
    """"1764165600.123" → ns, exactly (no float rounding: $msec and $request_time are decimal)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * 1_000_000_000
    if isinstance(value, float):  # a number in the JSON: microsecond precision survives
        return round(value * 1_000_000) * 1000
    text = _text(value)
    if text is None:
        return None
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(whole) * 1_000_000_000 + (int(frac[:9].ljust(9, "0")) if frac else 0)


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
    f: dict[str, Any] = {canon: obj[key] for canon, key in plan}
    rec = AuditRecord(source=SOURCE, fields=f)

    method = _text(f.get("method"))
    rec.method = method.upper() if method is not None else None
    path = _text(f.get("request_uri")) or _text(f.get("path"))
    if path is not None:
        rec.path = path.split("?", 1)[0]
    rec.status = _int(f.get("status")) if "status" in f else None
    rec.user_id = _text(f.get("user_id"))
    rec.app_id = _text(f.get("app_id"))
    rec.request_id = _text(f.get("request_id"))
    rec.traceparent = _text(f.get("traceparent"))
    rec.client_address = _text(f.get("client_address"))
    rec.server_address = _text(f.get("server_address"))
    rec.user_agent = _text(f.get("user_agent"))
    rec.body_bytes_sent = _int(f.get("body_bytes_sent"))

    end = _seconds_to_ns(f["msec"]) if "msec" in f else None
    if end is None and "time" in f:
        end = _iso_to_ns(f["time"])
    rec.time_unix_nano = end
    duration = _seconds_to_ns(f.get("request_time"))
    rec.duration_ns = duration if duration is not None and duration > 0 else 0
    return rec


def upstream_response_length(rec: AuditRecord) -> int | None:
    return _last_int(rec.fields.get("upstream_response_length"))


def sent_content_length(rec: AuditRecord) -> int | None:
    return _int(rec.fields.get("sent_content_length"))


def text_field(rec: AuditRecord, name: str) -> str | None:
    return _text(rec.fields.get(name))
