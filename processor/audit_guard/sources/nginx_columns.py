"""An Nginx access batch's raw columns (one per canonical field, as nginx_access extracts them)
→ RecordBatch: text, numbers, times, sizes and ids, each converted column by column
(audit_guard.sources.columns) and range-checked (audit_guard.grammar.ranges).
"""

from __future__ import annotations

from itertools import repeat
from operator import is_not, itemgetter
from typing import Any

from ..grammar import ranges, timestamps
from ..grammar.ranges import all_within, check_column, check_ids, note_unparseable
from ..record import RecordBatch
from .columns import ints, last_ints, seconds_ns, structured_rows, text_column

__all__ = ["SOURCE", "from_columns"]

SOURCE = "nginx"


class _Rows:
    """What the column conversions of one batch share: its size, the column of a field the
    format does not log (all None, told apart by identity), and per row the names of the fields
    that were written but could not be taken (→ invalid_field:<name>), in the order found."""

    __slots__ = ("n", "none", "unparsed")

    def __init__(self, n: int) -> None:
        self.n = n
        self.none: list[Any] = [None] * n
        self.unparsed: dict[int, list[str]] = {}

    def texts(self, col: Any, name: str | None = None) -> list[str | None]:
        """Text values; a field the format does not log stays None. `name`: a JSON object or
        array where the text belongs is absent and invalid_field:<name>."""
        if col is self.none:
            return self.none
        out, all_str = text_column(col)
        if name is not None and not all_str and None in out:
            for i in structured_rows(col):
                self.note(i, name)
        return out

    def note(self, i: int, name: str) -> None:
        names = self.unparsed.setdefault(i, [])
        if name not in names:
            names.append(name)

    def unparsed_column(self) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = [()] * self.n
        for i, names in self.unparsed.items():
            out[i] = tuple(names)
        return out


def from_columns(objs: list[Any], columns: list[Any]) -> RecordBatch:
    """The records' raw columns (in the canonical-field order of nginx_access.ALIASES, None:
    not logged) → RecordBatch.

    Every value is range-checked on the way (audit_guard.grammar.ranges): one out of range
    becomes absent and `invalid_field:<name>` on its record alone, never an error for the
    batch. The steps run in this order because it is the order of the names in `unparsed`."""
    rows = _Rows(len(objs))
    (
        method, request_uri, path, status, msec, time_text, request_time, client, user_id,
        app_id, request_id, traceparent, server, user_agent, completion, body_bytes_sent,
        _bytes_sent, content_length, content_encoding, gzip_ratio, _upstream_status,
        upstream_length, _upstream_received, _connection, _connection_requests,
    ) = (rows.none if col is None else col for col in columns)
    methods = _methods(rows.texts(method, "method"))
    paths = _paths(rows, request_uri, path)
    statuses = _statuses(rows, status)
    ends = _end_times(rows, msec, time_text)
    durations = _durations(rows, request_time)
    sizes = {name: _size(rows, name, col, convert) for name, col, convert in (
        ("body_bytes_sent", body_bytes_sent, ints), ("content_length", content_length, ints),
        ("upstream_length", upstream_length, last_ints))}
    # Only when the format logs it: a format without $request_completion proves nothing.
    completed: list[bool | None] = (
        rows.none if completion is rows.none
        else list(map(is_not, rows.texts(completion), repeat(None)))
    )
    compressed = _compressed(rows, content_encoding, gzip_ratio)
    request_ids = check_ids("request_id", rows.texts(request_id, "request_id"), rows.unparsed)
    traceparents = check_ids("traceparent", rows.texts(traceparent, "traceparent"),
                             rows.unparsed)
    user_ids, app_ids = rows.texts(user_id, "user_id"), rows.texts(app_id, "app_id")
    clients = rows.texts(client, "client_address")
    servers = rows.texts(server, "server_address")
    user_agents = rows.texts(user_agent, "user_agent")
    return RecordBatch(
        SOURCE, rows.n,
        time_unix_nano=ends, duration_ns=durations, method=methods, path=paths,
        status=statuses, user_id=user_ids, app_id=app_ids, request_id=request_ids,
        traceparent=traceparents, client_address=clients, server_address=servers,
        user_agent=user_agents, body_bytes_sent=sizes["body_bytes_sent"], completed=completed,
        content_length=sizes["content_length"], upstream_length=sizes["upstream_length"],
        compressed=compressed, unparsed=rows.unparsed_column(), fields=objs,
    )


def _methods(methods: list[str | None]) -> list[str | None]:
    if None not in methods:  # a handful of distinct methods: upper-case each once
        upper = {m: m.upper() for m in set(methods)}
        return list(map(upper.__getitem__, methods))
    return [m.upper() if m is not None else None for m in methods]


def _paths(rows: _Rows, request_uri: Any, path: Any) -> list[str | None]:
    """$request_uri without its query string, else $uri."""
    targets = rows.texts(request_uri, "path")
    if None in targets:
        targets = [t if t is not None else p
                   for t, p in zip(targets, rows.texts(path, "path"), strict=True)]
        return [t.partition("?")[0] if t is not None else None for t in targets]
    if "?" not in "".join(targets):  # one C pass: no query string anywhere
        return targets
    return list(map(itemgetter(0), map(str.partition, targets, repeat("?"))))


def _statuses(rows: _Rows, status: Any) -> list[int | None]:
    statuses = ints(status, few_distinct=True)
    if all_within(statuses, ranges.STATUSES):  # the usual case: no None scan, nothing to note
        return statuses
    if None in statuses:
        note_unparseable("status", statuses, status, rows.unparsed)
    return check_column("status", statuses, ranges.STATUSES, rows.unparsed)


def _end_times(rows: _Rows, msec: Any, time_text: Any) -> list[int | None]:
    """$msec, else the ISO time: a written but bad $msec is invalid_field:time even when the
    ISO time stands in for it."""
    ends = seconds_ns(msec)
    if all_within(ends, ranges.TIMES):
        return ends
    ends = check_column("time", ends, ranges.TIMES, rows.unparsed)
    if None not in ends:
        return ends
    note_unparseable("time", ends, msec, rows.unparsed)
    times = rows.texts(time_text)
    for i, end in enumerate(ends):
        if end is None:
            ends[i] = _iso_to_ns(times[i])
            if ends[i] is None and times[i] is not None:
                rows.note(i, "time")
    return check_column("time", ends, ranges.TIMES, rows.unparsed)


def _durations(rows: _Rows, request_time: Any) -> list[int]:
    durations = seconds_ns(request_time, few_distinct=True)  # ms values repeat
    if all_within(durations, ranges.DURATIONS):
        return durations  # type: ignore[return-value]
    if None in durations:
        note_unparseable("duration", durations, request_time, rows.unparsed)
    durations = check_column("duration", durations, ranges.DURATIONS, rows.unparsed)
    if None in durations:
        return [d if d is not None else 0 for d in durations]
    return durations  # type: ignore[return-value]


def _size(rows: _Rows, name: str, col: Any, convert: Any) -> list[int | None]:
    values = convert(col)
    if all_within(values, ranges.SIZES):
        return values
    if col is not rows.none and None in values:
        note_unparseable(name, values, col, rows.unparsed)
    return check_column(name, values, ranges.SIZES, rows.unparsed)


def _compressed(rows: _Rows, content_encoding: Any, gzip_ratio: Any) -> list[bool]:
    encodings, ratios = rows.texts(content_encoding), rows.texts(gzip_ratio)
    if encodings.count(None) == rows.n and ratios.count(None) == rows.n:  # none compressed
        return [False] * rows.n
    return [e is not None or r is not None for e, r in zip(encodings, ratios, strict=True)]


def _iso_to_ns(value: Any) -> int | None:
    """$time_iso8601, else $time_local (both carry their offset)."""
    text = value if isinstance(value, str) else None
    if not text or text == "-":
        return None
    ns = timestamps.iso8601_ns(text)
    return ns if ns is not None else timestamps.nginx_time_local_ns(text)
