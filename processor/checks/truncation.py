"""Truncation detection for proxied HTTP responses (nginx access records).

Nginx logs status 200 for many cut responses (see shared/reference.md): the evidence is an empty
`$request_completion`, or fewer body bytes sent than the response promised (Content-Length) or
than the upstream delivered. A cut JSON line (the log record itself) is found by the parser.
"""

from __future__ import annotations

from .. import flags
from ..record import AuditRecord

__all__ = ["check_truncation"]

# No body is expected for these, whatever Content-Length says.
_BODYLESS_STATUS = frozenset({204, 304})


def check_truncation(rec: AuditRecord) -> None:
    reasons = rec.truncation_reasons
    if rec.completed is False:
        reasons.append(flags.REQUEST_INCOMPLETE)
    sent = rec.body_bytes_sent
    if sent is not None and rec.method != "HEAD":
        status = rec.status
        if status is None or (status >= 200 and status not in _BODYLESS_STATUS):
            promised = rec.content_length
            # A proxy compressing the body makes it legitimately smaller than the upstream's.
            upstream = None if rec.compressed else rec.upstream_length
            if (promised is not None and sent < promised) or (
                upstream is not None and sent < upstream
            ):
                reasons.append(flags.RESPONSE_SHORT)
    if reasons:
        add = rec.add_flag
        for reason in reasons:
            add(flags.truncated(reason))
