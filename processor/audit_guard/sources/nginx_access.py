"""Nginx JSON access-log records → audit records (a RecordBatch, or one AuditRecord).

Operators name their log_format keys many ways: after nginx variables (`request_method`,
`request_uri`, `msec`, `http_x_user_id`), or short (`method`, `path`, `ip`). Values may be
strings (escape=json quotes everything it is given quoted) or numbers. This module accepts all
of those. Which source key fills which audit field is decided once per distinct key layout (the
lines of one log_format share it) and cached; a batch whose lines share one layout is then
extracted column by column with C-level itemgetter/zip passes. Lines of the format we ship
(otel/nginx/audit_log_format.conf) are decoded straight into columns by a C decoder
(`_audit_json.c`, the hot path), the rows kept as columns (`AuditJsonRows`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

import msgspec
import orjson

from ..record import AuditRecord, RecordBatch
from .jsonline import decode_json_object, mark_decoding
from .nginx_columns import SOURCE, from_columns

__all__ = [
    "AUDIT_JSON_KEYS", "SOURCE", "AuditJsonLine", "AuditJsonRows", "native_decoder", "parse_line",
    "parse_lines", "parse_mapping", "parse_mappings",
]

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


class AuditJsonLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One line of the shipped `audit_json` log_format (otel/nginx/audit_log_format.conf),
    decoded straight into its fields: every key required and no other key allowed, so a line
    of any other format fails to decode and takes the general (dict) path instead.

    The fast path for the format we ship: measured 2.3 µs a record for decoding, extracting the
    columns and freeing the record, against 3.9 µs for a dict per line. It reads like a
    read-only dict (`get`, `[]`, `in`, iteration over the keys), which is all its users need.
    Values keep their JSON types (no conversion), as with the dict path.
    """

    time_iso8601: Any
    msec: Any
    request_id: Any
    connection: Any
    connection_requests: Any
    remote_addr: Any
    request_method: Any
    request_uri: Any
    uri: Any
    server_protocol: Any
    host: Any
    server_name: Any
    status: Any
    request_completion: Any
    body_bytes_sent: Any
    bytes_sent: Any
    sent_http_content_length: Any
    sent_http_content_type: Any
    upstream_status: Any
    upstream_response_length: Any
    upstream_bytes_received: Any
    upstream_response_time: Any
    upstream_addr: Any
    request_time: Any
    http_user_agent: Any
    http_traceparent: Any
    user_id: Any
    app_id: Any

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _AUDIT_JSON_KEYSET else default

    def __getitem__(self, key: str) -> Any:
        if key not in _AUDIT_JSON_KEYSET:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in _AUDIT_JSON_KEYSET

    def __iter__(self) -> Any:
        return iter(AUDIT_JSON_KEYS)

    def __len__(self) -> int:
        return len(AUDIT_JSON_KEYS)

    def keys(self) -> tuple[str, ...]:
        return AUDIT_JSON_KEYS

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


AUDIT_JSON_KEYS: tuple[str, ...] = AuditJsonLine.__struct_fields__
_AUDIT_JSON_KEYSET = frozenset(AUDIT_JSON_KEYS)
_AUDIT_JSON = msgspec.json.Decoder(AuditJsonLine)
# The struct field (by position) of each canonical field, in _CANON order.
_AUDIT_JSON_COLUMNS = tuple(None if key is None else AUDIT_JSON_KEYS.index(key)
                            for key in _plan(AUDIT_JSON_KEYS))


try:  # setup.py builds it; where it could not be built, msgspec decodes every line
    from ._audit_json import decode as _decode_columns
except ImportError:  # pragma: no cover - a setup without a C compiler
    _decode_columns = None


class AuditJsonRows:
    """The `fields` of a batch of the shipped format, kept as the decoder's columns (one list
    per key, in AUDIT_JSON_KEYS order): a read-only sequence of AuditJsonLine, each row made
    only when it is read (rules over `fields`, the admin API, the error-log join). Columns are
    read whole with `column(key)`."""

    __slots__ = ("columns", "_index")

    def __init__(self, columns: list[list[Any]]) -> None:
        self.columns = columns
        self._index = dict(zip(AUDIT_JSON_KEYS, columns, strict=True))

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return AuditJsonRows([col[i] for col in self.columns])
        return AuditJsonLine(*map(itemgetter(i), self.columns))

    def __iter__(self) -> Iterator[AuditJsonLine]:
        return (AuditJsonLine(*row) for row in zip(*self.columns, strict=True))

    def __eq__(self, other: object) -> bool:
        try:
            return list(self) == list(other)  # type: ignore[call-overload]
        except TypeError:
            return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def column(self, key: str) -> list[Any] | None:
        """The values of `key` in every row (a new list), None when the format has no such key."""
        col = self._index.get(key)
        return None if col is None else list(col)

    def columns_of(self, keys: Sequence[str]) -> list[list[Any] | None]:
        """The columns of `keys` themselves, not copied (read them, never change them); None
        for a key the format does not have."""
        return list(map(self._index.get, keys))


_NOT_SHIPPED = (msgspec.MsgspecError, ValueError, TypeError, RecursionError)


def native_decoder() -> bool:
    """Whether the C decoder was built (setup.py): without it msgspec decodes every line."""
    return _decode_columns is not None


def _shipped_rows(lines: list[bytes | str]) -> AuditJsonRows | None:
    """Lines of the shipped format as columns: decoded by the C decoder, and the few it leaves
    (an escape, a non-ASCII character, a long number) by msgspec into the same columns; all by
    msgspec where the C decoder was not built. None when a line is not of the shipped format
    (cut, broken, too deeply nested, not UTF-8, another log_format): the general path's."""
    if _decode_columns is None:
        try:
            structs = list(map(_AUDIT_JSON.decode, lines))
        except _NOT_SHIPPED:
            return None
        # All fields of every line at once (astuple is one C call a line).
        return AuditJsonRows([list(col) for col in zip(*map(msgspec.structs.astuple, structs),
                                                        strict=True)])
    columns, fallback = _decode_columns(lines, AUDIT_JSON_KEYS)
    for i in fallback:
        try:
            values = msgspec.structs.astuple(_AUDIT_JSON.decode(lines[i]))
        except _NOT_SHIPPED:
            return None
        for col, value in zip(columns, values, strict=True):
            col[i] = value
    return AuditJsonRows(columns)


def _plan_of(keys: tuple[str, ...]) -> tuple[str | None, ...]:
    return _PLANS.get(keys) or _plan(keys)


def _columns(objs: list[dict[str, Any]], plan: tuple[str | None, ...]) -> list[Any]:
    """One column per canonical field (in _CANON order) of raw values, for objects that all
    have the same key layout; None for a field the format does not log."""
    present = [k for k in plan if k is not None]
    if len(present) > 1:
        extracted = iter(zip(*map(itemgetter(*present), objs), strict=True))
    elif present:
        extracted = iter([[o[present[0]] for o in objs]])
    else:
        extracted = iter([])
    return [next(extracted) if k is not None else None for k in plan]


def _parse_mixed(objs: list[dict[str, Any]]) -> RecordBatch:
    """Lines of several log_formats in one batch: parse each layout's rows, keep the order."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, obj in enumerate(objs):
        groups.setdefault(tuple(obj), []).append(i)
    return RecordBatch.scatter(
        SOURCE, len(objs),
        [(rows, parse_mappings([objs[i] for i in rows])) for rows in groups.values()],
    )


def parse_mappings(objs: list[dict[str, Any]]) -> RecordBatch:
    """Decoded access-log objects (or the collector's parsed attributes) → RecordBatch."""
    n = len(objs)
    if n == 0:
        return RecordBatch(SOURCE, 0)
    keys = tuple(objs[0])
    if not all(map(keys.__eq__, map(tuple, objs))):
        return _parse_mixed(objs)
    return from_columns(objs, _columns(objs, _plan_of(keys)))


def decode_lines(lines: list[bytes | str]) -> tuple[list[dict[str, Any]], set[int], set[int]]:
    """JSON lines → (objects, rows cut mid-JSON, rows that are not JSON objects)."""
    try:
        objs = list(map(orjson.loads, lines))
        if set(map(type, objs)) <= {dict}:
            return objs, set(), set()
    except orjson.JSONDecodeError:
        pass
    objs, cut, malformed = [], set(), set()
    for i, line in enumerate(lines):
        decoded = decode_json_object(line)
        objs.append(decoded.obj)
        if decoded.cut:
            cut.add(i)
        elif decoded.malformed:
            malformed.add(i)
    return objs, cut, malformed


def parse_lines(lines: list[bytes | str]) -> RecordBatch:
    """Access-log lines (the collector's log bodies) → RecordBatch, never raising."""
    if not lines:
        return RecordBatch(SOURCE, 0)
    rows = _shipped_rows(lines)
    if rows is None:
        return _parse_general(lines)
    batch = from_columns(rows, [rows.columns[i] if i is not None else None
                                for i in _AUDIT_JSON_COLUMNS])
    batch.raw = list(lines)
    return batch


def _parse_general(lines: list[bytes | str]) -> RecordBatch:
    """Lines of any log_format, cut, broken or not UTF-8: decoded one by one, salvaged, flagged."""
    objs, cut, malformed = decode_lines(lines)
    batch = parse_mappings(objs)
    batch.raw = list(lines)
    mark_decoding(batch, cut, malformed)
    return batch


def parse_line(line: bytes | str) -> AuditRecord:
    return parse_lines([line]).row(0)


def parse_mapping(obj: dict[str, Any]) -> AuditRecord:
    return parse_mappings([obj]).row(0)
