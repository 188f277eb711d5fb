"""Audit field validation: who (user_id), in which app (app_id), did what (method, path), with
what result (status), when (time). Each problem becomes a `missing_field:<name>` or
`invalid_field:<name>` flag, also listed in the record's violations (span: `audit.violations`).
"""

from __future__ import annotations

import re
from itertools import compress

from .. import flags
from ..record import RecordBatch

__all__ = ["AuditFieldValidator"]

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")  # an RFC 9110 token, as nginx upper-cases it
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_MAX_IDENTITY = 256  # an id, not a payload


def _identity_ok(value: str) -> bool:
    return len(value) <= _MAX_IDENTITY and value.isprintable()


class AuditFieldValidator:
    """Checks the audit fields. Identity (user_id, app_id) is required only on audited paths:
    a static asset or health check has no user, and flagging it would drown the real gaps.
    """

    def __init__(self, audited_paths: re.Pattern[str]) -> None:
        self._audited = audited_paths.match

    def __call__(self, batch: RecordBatch) -> None:
        if batch.source != "nginx":
            self._other_source(batch)
            return
        # Values repeat across a batch (a few methods, statuses, users), so each check looks at
        # the distinct values first and visits rows only when some value is bad.
        found: dict[int, list[str]] = {}

        def add(row: int, flag: str) -> None:
            found.setdefault(row, []).append(flag)

        methods = batch.method
        if not set(methods) <= _KNOWN_METHODS:
            for i, m in enumerate(methods):
                if m is None:
                    add(i, flags.missing_field("method"))
                elif m not in _KNOWN_METHODS and _METHOD.fullmatch(m) is None:
                    add(i, flags.invalid_field("method"))
        paths = batch.path
        distinct_paths = set(paths)
        bad_paths = {p for p in distinct_paths if p is None or (p[:1] != "/" and p != "*")}
        audited_paths = {p for p in distinct_paths - bad_paths if self._audited(p)}
        audited = list(compress(range(len(paths)), map(audited_paths.__contains__, paths)))
        if bad_paths:
            for i, p in enumerate(paths):
                if p in bad_paths:
                    flag = flags.missing_field if p is None else flags.invalid_field
                    add(i, flag("path"))
        statuses = batch.status
        if any(c is None or not 100 <= c <= 599 for c in set(statuses)):
            for i, code in enumerate(statuses):
                if code is None or not 100 <= code <= 599:
                    bad = code is not None or "status" in batch.unparsed[i]
                    add(i, flags.invalid_field("status") if bad else flags.missing_field("status"))
        if None in batch.time_unix_nano:
            for i, t in enumerate(batch.time_unix_nano):
                if t is None:
                    bad = "time" in batch.unparsed[i]
                    add(i, flags.invalid_field("time") if bad else flags.missing_field("time"))
        if audited:
            for name, column in (("user_id", batch.user_id), ("app_id", batch.app_id)):
                values = list(map(column.__getitem__, audited))
                bad_values = {v for v in set(values) if v is None or not _identity_ok(v)}
                if bad_values:
                    for i, v in zip(audited, values, strict=True):
                        if v in bad_values:
                            add(i, flags.missing_field(name) if v is None
                                else flags.invalid_field(name))
        for i in sorted(found):
            batch.violations.setdefault(i, []).extend(found[i])
            for flag in found[i]:
                batch.add_flag(i, flag)

    def _other_source(self, batch: RecordBatch) -> None:
        """App and database records: an app record that describes a request (has a method,
        path or status) is checked like an access record; every record needs a valid time; a
        database statement needs its role (user_id)."""
        for i in range(len(batch)):
            found: list[str] = []
            method, path, status = batch.method[i], batch.path[i], batch.status[i]
            if method is not None or path is not None or status is not None:
                if method is None:
                    found.append(flags.missing_field("method"))
                elif method not in _KNOWN_METHODS and _METHOD.fullmatch(method) is None:
                    found.append(flags.invalid_field("method"))
                if path is None:
                    found.append(flags.missing_field("path"))
                elif path[:1] != "/" and path != "*":
                    found.append(flags.invalid_field("path"))
                if status is None or not 100 <= status <= 599:
                    bad = status is not None or "status" in batch.unparsed[i]
                    found.append(flags.invalid_field("status") if bad
                                 else flags.missing_field("status"))
            if batch.time_unix_nano[i] is None:
                bad = "time" in batch.unparsed[i]
                found.append(flags.invalid_field("time") if bad else flags.missing_field("time"))
            identity = []
            if path is not None and path[:1] == "/" and self._audited(path):
                identity = [("user_id", batch.user_id[i]), ("app_id", batch.app_id[i])]
            elif batch.source == "pgaudit":
                identity = [("user_id", batch.user_id[i])]
            for name, value in identity:
                if value is None:
                    found.append(flags.missing_field(name))
                elif not _identity_ok(value):
                    found.append(flags.invalid_field(name))
            if found:
                batch.violations.setdefault(i, []).extend(found)
                for flag in found:
                    batch.add_flag(i, flag)
