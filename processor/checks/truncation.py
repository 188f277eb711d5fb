"""Truncation detection for nginx access records.

Nginx logs status 200 for many cut responses (see shared/reference.md): the evidence is an empty
`$request_completion`, or fewer body bytes sent than the response promised (Content-Length) or
than the upstream delivered. A cut JSON line (the log record itself) is found by the parser.
"""

from __future__ import annotations

from .. import flags
from ..record import AuditRecord
from ..sources.nginx_access import sent_content_length, text_field, upstream_response_length

__all__ = ["check_nginx_truncation"]

# No body is expected for these, whatever Content-Length says.
_BODYLESS_STATUS = frozenset({204, 304})


def check_nginx_truncation(rec: AuditRecord) -> None:
    reasons = rec.truncation_reasons
    f = rec.fields
    # Only when the format logs it: a format without $request_completion proves nothing.
    if "request_completion" in f and text_field(rec, "request_completion") is None:
        reasons.append(flags.REQUEST_INCOMPLETE)
    sent = rec.body_bytes_sent
    if (
        sent is not None
        and rec.method != "HEAD"
        and rec.status not in _BODYLESS_STATUS
        and not (rec.status is not None and rec.status < 200)
    ):
        promised = sent_content_length(rec)
        # nginx compressing the body makes it legitimately smaller than the upstream's bytes.
        compressed = text_field(rec, "sent_content_encoding") or text_field(rec, "gzip_ratio")
        upstream = None if compressed else upstream_response_length(rec)
        if (promised is not None and sent < promised) or (upstream is not None and sent < upstream):
            reasons.append(flags.RESPONSE_SHORT)
    for reason in reasons:
        rec.add_flag(flags.truncated(reason))
