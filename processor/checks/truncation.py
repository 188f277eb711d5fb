"""Truncation detection for proxied HTTP responses (nginx access records).

Nginx logs status 200 for many cut responses (see shared/reference.md): the evidence is an empty
`$request_completion`, or fewer body bytes sent than the response promised (Content-Length) or
than the upstream delivered. A cut JSON line (the log record itself) is found by the parser.
"""

from __future__ import annotations

from operator import lt

from .. import flags
from ..record import RecordBatch

__all__ = ["check_truncation"]

# No body is expected for these, whatever Content-Length says.
_BODYLESS_STATUS = frozenset({204, 304})


def _any_short(sent: list[int | None], expected: list[int | None]) -> bool:
    """Might any row have sent fewer bytes than expected? (C-level when no value is missing.)"""
    if None in sent or None in expected:
        return True  # can't tell without looking at rows
    return any(map(lt, sent, expected))


def check_truncation(batch: RecordBatch) -> None:
    reasons = batch.truncation_reasons
    if False in batch.completed:
        for i, done in enumerate(batch.completed):
            if done is False:
                reasons.setdefault(i, []).append(flags.REQUEST_INCOMPLETE)
    methods, statuses = batch.method, batch.status
    sent_col = batch.body_bytes_sent
    promised, upstream, compressed = batch.content_length, batch.upstream_length, batch.compressed
    # The usual batch has every body sent whole: then no row needs a visit.
    if _any_short(sent_col, promised) or _any_short(sent_col, upstream):
        for i, sent in enumerate(sent_col):
            if sent is None:
                continue
            p, u = promised[i], upstream[i]
            short_of_promise = p is not None and sent < p
            short_of_upstream = u is not None and sent < u and not compressed[i]
            if not (short_of_promise or short_of_upstream):
                continue
            status = statuses[i]
            if methods[i] == "HEAD" or (
                status is not None and (status < 200 or status in _BODYLESS_STATUS)
            ):
                continue  # no body was due
            reasons.setdefault(i, []).append(flags.RESPONSE_SHORT)
    for i in sorted(reasons):
        for reason in reasons[i]:
            batch.add_flag(i, flags.truncated(reason))
