"""Audit field validation: who (user_id), in which app (app_id), did what (method, path), with
what result (status), when (time). Each problem becomes a `missing_field:<name>` or
`invalid_field:<name>` flag, also listed in `record.violations` (span: `audit.violations`).
"""

from __future__ import annotations

import re

from .. import flags
from ..record import AuditRecord

__all__ = ["AuditFieldValidator"]

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")  # an RFC 9110 token, as nginx upper-cases it
_IDENTITY = re.compile(r"[^\x00-\x1f\x7f]{1,256}")  # printable, bounded: an id, not a payload


class AuditFieldValidator:
    """Checks the audit fields. Identity (user_id, app_id) is required only on audited paths:
    a static asset or health check has no user, and flagging it would drown the real gaps.
    """

    def __init__(self, audited_paths: re.Pattern[str]) -> None:
        self._audited = audited_paths

    def __call__(self, rec: AuditRecord) -> None:
        v = rec.violations
        unparsed = rec.unparsed
        if rec.method is None:
            v.append(flags.missing_field("method"))
        elif _METHOD.fullmatch(rec.method) is None:
            v.append(flags.invalid_field("method"))
        if rec.path is None:
            v.append(flags.missing_field("path"))
        elif not rec.path.startswith("/") and rec.path != "*":
            v.append(flags.invalid_field("path"))
        if rec.status is None:
            v.append(
                flags.invalid_field("status")
                if "status" in unparsed
                else flags.missing_field("status")
            )
        elif not 100 <= rec.status <= 599:
            v.append(flags.invalid_field("status"))
        if rec.time_unix_nano is None:
            v.append(
                flags.invalid_field("time") if "time" in unparsed else flags.missing_field("time")
            )
        if rec.path is not None and self._audited.match(rec.path):
            for name, value in (("user_id", rec.user_id), ("app_id", rec.app_id)):
                if value is None:
                    v.append(flags.missing_field(name))
                elif _IDENTITY.fullmatch(value) is None:
                    v.append(flags.invalid_field(name))
        if v:
            rec.flags.extend(v)
