"""Truncation detection for proxied HTTP responses (nginx access records).

Nginx logs status 200 for many cut responses (see shared/reference.md): the evidence is an empty
`$request_completion`, or fewer body bytes sent than the response promised (Content-Length) or
than the upstream delivered. A cut JSON line (the log record itself) is found by the parser.
"""

from __future__ import annotations

from itertools import compress
from operator import lt

from .. import flags
from ..record import RecordBatch

__all__ = ["check_truncation"]

# No body is expected for these, whatever Content-Length says.
_BODYLESS_STATUS = frozenset({204, 304})


def _short_rows(sent: list[int | None], expected: list[int | None]) -> set[int]:
    """Rows that sent fewer body bytes than expected (C-level when no value is missing)."""
    if None not in sent and None not in expected:
        return set(compress(range(len(sent)), map(lt, sent, expected)))
    return {i for i, (s, e) in enumerate(zip(sent, expected, strict=True))
            if s is not None and e is not None and s < e}


def check_truncation(batch: RecordBatch) -> None:
    reasons = batch.truncation_reasons
    if False in batch.completed:
        for i, done in enumerate(batch.completed):
            if done is False:
                reasons.setdefault(i, []).append(flags.REQUEST_INCOMPLETE)
    sent = batch.body_bytes_sent
    short_of_promise = _short_rows(sent, batch.content_length)
    # A proxy compressing the body makes it legitimately smaller than the upstream's.
    short_of_upstream = {i for i in _short_rows(sent, batch.upstream_length)
                         if not batch.compressed[i]}
    methods, statuses = batch.method, batch.status
    for i in sorted(short_of_promise | short_of_upstream):
        status = statuses[i]
        if methods[i] == "HEAD" or (
            status is not None and (status < 200 or status in _BODYLESS_STATUS)
        ):
            continue  # no body was due
        reasons.setdefault(i, []).append(flags.RESPONSE_SHORT)
    for i in sorted(reasons):
        for reason in reasons[i]:
            batch.add_flag(i, flags.truncated(reason))
