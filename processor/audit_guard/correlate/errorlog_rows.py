"""Which access record an Nginx error-log event belongs to: one, or none yet (processor's
error-log join, audit_guard.correlate.errorlog, asks this module).

An event names its connection (`*N` = `$connection`) and request line, and carries nginx's
time at one-second resolution. Its candidates are the access records with the same connection
serial, method and URI whose [start, end] (start = end − `$request_time`) holds the event's
second. Keep-alive connections carry several requests, often with the same line in the same
second; nginx itself settles it: every event the join takes means the response was cut or the
client went away, and either ends an HTTP/1.x client connection (nginx sets keepalive off). So
the event's request is its connection's last (highest `$connection_requests`), and a candidate
with a later request on its connection is not it. Over HTTP/2 a cut ends a stream only.

When candidates remain that these facts do not tell apart (no `$connection_requests` in the
log format, two with the same count, HTTP/2), the last one logged is chosen and the choice is
marked ambiguous.

Pure functions over parsed rows; no clock, no state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from ..record import field_values
from ..sources.nginx_error import ErrorEvent

__all__ = ["Key", "Row", "access_key", "by_connection", "choose", "during", "http1",
           "may_be_last", "scan"]

_NS = 1_000_000_000
Key = tuple[int, str, str]


class Row(NamedTuple):
    """An access record an event may belong to."""

    n: int | None  # $connection_requests (None: not logged)
    end: int | None  # when nginx logged it (ns)
    request_id: str | None
    trace_id: bytes  # b"" until the record was checked (it is then in the batch at hand)
    span_id: bytes

    def identity(self) -> tuple[int | None, int | None, str | None]:
        """What tells this record from the other records of its key, when sent again."""
        return self.n, self.end, self.request_id


def access_key(fields: Any) -> Key | None:
    connection = fields.get("connection")
    method, uri = fields.get("request_method"), fields.get("request_uri")
    if connection is None or not method or not uri:
        return None
    try:
        return int(connection), str(method), str(uri)
    except (TypeError, ValueError):
        return None


def _connection(value: Any) -> int | None:
    """A row's `$connection` value as the serial number (None: none, or not a number)."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _requests(fields: Any) -> int | None:
    value = fields.get("connection_requests")
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def by_connection(fields: list[Any], wanted: set[int] | None = None) -> dict[int, list[int]]:
    """Row numbers by connection serial (only the `wanted` connections, when given)."""
    out: dict[int, list[int]] = {}
    for i, value in enumerate(field_values(fields, "connection")):
        connection = _connection(value)
        if connection is not None and (wanted is None or connection in wanted):
            out.setdefault(connection, []).append(i)
    return out


def http1(event: ErrorEvent) -> bool:
    """Does a cut end the event's client connection? (HTTP/1.x: yes; HTTP/2 and 3: no.)"""
    return not (event.request_protocol or "").startswith(("HTTP/2", "HTTP/3"))


def during(event: ErrorEvent, end: int | None, duration: int | None) -> bool:
    """The event's second within the request's [start, end], at the error log's resolution
    (true when either time is unknown)."""
    when = event.time_unix_nano
    if when is None or end is None:
        return True
    second = when // _NS
    return (end - (duration or 0)) // _NS <= second <= end // _NS


def scan(event: ErrorEvent, key: Key, rows: Iterable[int], fields: list[Any],
         ends: list[int | None], durations: list[int] | None,
         ids: tuple[list[bytes], list[bytes]] | None) -> tuple[list[tuple[int, Row]], int | None]:
    """The event's candidates among `rows` (row numbers of its connection), in their order,
    and the highest `$connection_requests` among all of them."""
    found: list[tuple[int, Row]] = []
    latest: int | None = None
    for i in rows:
        row = fields[i]
        n = _requests(row)
        if n is not None and (latest is None or n > latest):
            latest = n
        if access_key(row) != key or not during(event, ends[i],
                                                 durations[i] if durations else None):
            continue
        request_id = row.get("request_id")
        trace_id, span_id = (ids[0][i], ids[1][i]) if ids is not None else (b"", b"")
        found.append((i, Row(n, ends[i], None if request_id is None else str(request_id),
                             trace_id, span_id)))
    return found, latest


def may_be_last(row: Row, latest: int | None, event: ErrorEvent) -> bool:
    """False when a later request on the connection shows `row` was not the one cut."""
    return not (http1(event) and latest is not None and row.n is not None and row.n < latest)


def choose(rows: list[Row], latest: int | None, event: ErrorEvent) -> tuple[Row | None, bool]:
    """(the event's request among `rows`, whether others were as likely). `rows` in the order
    they were logged: of equals, the last one wins."""
    rows = [r for r in rows if may_be_last(r, latest, event)]
    if not rows:
        return None, False
    best = max(reversed(rows), key=lambda r: (-1 if r.n is None else r.n, r.end or 0))
    ordered = http1(event) and best.n is not None
    ambiguous = any(r is not best and not (ordered and r.n is not None and r.n < best.n)
                    for r in rows)
    return best, ambiguous
