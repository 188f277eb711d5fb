"""How the error-log join's decisions show on records: a flag, an attribute and a span event
on the access record an event belongs to, or records of their own (source nginx_error) for
events that came after their request or joined none (audit_guard.correlate.errorlog)."""

from __future__ import annotations

from hashlib import blake2b

from ..record import RecordBatch
from ..sources.nginx_error import FLAG_FOR_KIND, ErrorEvent

__all__ = ["AMBIGUOUS", "error_event", "events_batch", "flag_row"]

# On a flagged record (or a late-evidence span): its event had other requests as likely
# (counted in audit_error_join_ambiguous_total).
AMBIGUOUS = "audit.error_join.ambiguous"


def flag_row(batch: RecordBatch, i: int, event: ErrorEvent, ambiguous: bool) -> None:
    """The event's flag, text and span event on access row `i`."""
    reason = FLAG_FOR_KIND[event.kind or ""]
    assert reason is not None
    reasons = batch.truncation_reasons.setdefault(i, [])
    name = reason.partition(":")[2]
    if name not in reasons:
        reasons.append(name)
    attrs = dict(batch.attributes[i] or {})
    attrs["nginx.error"] = event.message
    if ambiguous:
        attrs[AMBIGUOUS] = True
    batch.attributes[i] = attrs
    events = list(batch.events[i] or [])
    events.append(error_event(event))
    batch.events[i] = events


def error_event(event: ErrorEvent) -> tuple[int, str, dict[str, str | int]]:
    """The error-log line as a span event: when nginx wrote it, its level, its text."""
    attrs: dict[str, str | int] = {"log.severity": event.level, "message": event.message}
    if event.connection is not None:
        attrs["nginx.connection"] = event.connection
    return (event.time_unix_nano or 0, f"nginx {event.level}: {event.kind}", attrs)


def events_batch(events: list[ErrorEvent], parents: list[tuple[bytes, bytes]] | None = None,
                 ambiguous: list[bool] | None = None) -> RecordBatch:
    """Error events as records of their own (source nginx_error) — child spans of the request
    they belong to when `parents` gives its (trace id, span id), else traces of their own;
    `ambiguous`: that request was one of several as likely."""
    n = len(events)
    batch = RecordBatch(
        "nginx_error", n,
        time_unix_nano=[e.time_unix_nano for e in events],
        method=[e.request_method for e in events],
        path=[(e.request_uri or "").partition("?")[0] or None for e in events],
        client_address=[e.client for e in events],
        server_address=[e.server for e in events],
        name=[f"nginx {e.level}: {e.kind}" for e in events],
        attributes=[{"nginx.error": e.message, "log.severity": e.level,
                     **({"nginx.connection": e.connection} if e.connection is not None else {}),
                     **({"audit.late_evidence": True} if parents else {}),
                     **({AMBIGUOUS: True} if ambiguous and ambiguous[i] else {})}
                    for i, e in enumerate(events)],
        raw=[f"{e.line}:{e.message}" for e in events],
        events=[[error_event(e)] for e in events],
    )
    for i, event in enumerate(events):
        reason = FLAG_FOR_KIND[event.kind or ""]
        if reason is not None:
            batch.truncation_reasons[i] = [reason.partition(":")[2]]
            batch.add_flag(i, reason)
        if parents:
            trace_id, parent = parents[i]
            batch.trace_id[i] = trace_id
            batch.parent_span_id[i] = parent
            batch.span_id[i] = blake2b(trace_id + parent + event.message.encode(),
                                       digest_size=8).digest()
        else:
            ident = f"{event.connection}|{event.time_unix_nano}|{event.message}".encode()
            batch.trace_id[i] = blake2b(b"nginx_error:" + ident, digest_size=16).digest()
            batch.span_id[i] = blake2b(b"nginx_error-span:" + ident, digest_size=8).digest()
            batch.trace_id_generated[i] = True
    return batch
