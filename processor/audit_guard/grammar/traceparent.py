"""The W3C `traceparent` header: `version-traceid-parentid-flags` (lower-case hex).

Read by the trace-id rules (audit_guard.correlate.traces) and by the PostgreSQL reader, which finds
a traceparent in application_name or a SQL comment (audit_guard.sources.pgaudit).
"""

from __future__ import annotations

import re

__all__ = ["ZERO_SPAN", "ZERO_TRACE", "parse_traceparent"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
ZERO_TRACE = b"\x00" * 16
ZERO_SPAN = b"\x00" * 8


def parse_traceparent(value: str) -> tuple[bytes, bytes] | None:
    """W3C traceparent → (trace_id, parent span id); None when invalid (all-zero ids too)."""
    m = _TRACEPARENT.fullmatch(value.strip().lower())
    if m is None or m.group(1) == "ff":
        return None
    trace_id, span_id = bytes.fromhex(m.group(2)), bytes.fromhex(m.group(3))
    if trace_id == ZERO_TRACE or span_id == ZERO_SPAN:
        return None
    return trace_id, span_id
