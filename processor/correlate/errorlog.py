"""Joining Nginx error-log events to their access records (offline, for replay).

A cut response often leaves its only trace in the error log: a streamed (SSE) answer whose
upstream closed early is logged 200/OK in the access log. An event joins the access record with
the same connection serial (`*N` = `$connection`), request method and URI, within a time window.
A joined event adds its flag (`truncated:upstream_closed`, `truncated:request_incomplete`) to the
access record; an event that means a cut but joins nothing is reported on its own (the request
may be missing from the access log).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..record import RecordBatch
from ..sources.nginx_error import FLAG_FOR_KIND, ErrorEvent, join_key

__all__ = ["ErrorLogIndex"]


def _access_key(fields: dict[str, Any]) -> tuple[int, str, str] | None:
    connection = fields.get("connection")
    method, uri = fields.get("request_method"), fields.get("request_uri")
    if connection is None or not method or not uri:
        return None
    try:
        return int(connection), str(method), str(uri)
    except (TypeError, ValueError):
        return None


class ErrorLogIndex:
    """Error events that mean a cut, by join key; `apply` flags the access rows they match."""

    def __init__(self, events: Iterable[ErrorEvent], window_ns: int) -> None:
        self._window = window_ns
        self._by_key: dict[tuple[int, str, str], list[ErrorEvent]] = {}
        self.unmatched: list[ErrorEvent] = []
        self._matched: set[int] = set()  # id() of events that joined a record
        for event in events:
            if event.kind is None or FLAG_FOR_KIND.get(event.kind) is None:
                continue
            key = join_key(event)
            if key is None:
                self.unmatched.append(event)
            else:
                self._by_key.setdefault(key, []).append(event)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def apply(self, batch: RecordBatch) -> None:
        """Flag the access rows an event joins (before the batch is checked)."""
        for i, fields in enumerate(batch.fields):
            key = _access_key(fields)
            events = self._by_key.get(key) if key is not None else None
            if not events:
                continue
            end = batch.time_unix_nano[i]
            for event in events:
                when = event.time_unix_nano
                if end is not None and when is not None and abs(when - end) > self._window:
                    continue
                self._matched.add(id(event))
                reason = FLAG_FOR_KIND[event.kind or ""]
                assert reason is not None
                reasons = batch.truncation_reasons.setdefault(i, [])
                name = reason.partition(":")[2]
                if name not in reasons:
                    reasons.append(name)
                attrs = dict(batch.attributes[i] or {})
                attrs["nginx.error"] = event.message
                batch.attributes[i] = attrs

    @property
    def joined(self) -> int:
        """How many events joined an access record."""
        return len(self._matched)

    def leftover(self) -> list[ErrorEvent]:
        """Events that mean a cut and joined no access record."""
        rest = [e for events in self._by_key.values() for e in events
                if id(e) not in self._matched]
        return sorted(self.unmatched + rest, key=lambda e: e.line)
