"""Audit field validation: who (user_id), in which app (app_id), did what (method, path), with
what result (status), when (time). Each problem becomes a `missing_field:<name>` or
`invalid_field:<name>` flag, also listed in the record's violations (span: `audit.violations`).
Any other field a source could not parse, or found out of range (audit_guard.grammar.ranges:
duration, sizes, ids), is `invalid_field:<name>` too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import compress
from typing import Any

from .. import flags
from ..record import RecordBatch

__all__ = ["AuditFieldValidator"]

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")  # an RFC 9110 token, as nginx upper-cases it
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_MAX_IDENTITY = 256  # an id, not a payload
_VALID_IDS_KEPT = 50_000


def _identity_ok(value: str) -> bool:
    return len(value) <= _MAX_IDENTITY and value.isprintable()


class AuditFieldValidator:
    """Checks the audit fields. Identity (user_id, app_id) is required only on audited paths:
    a static asset or health check has no user, and flagging it would drown the real gaps.
    """

    def __init__(self, audited: Callable[[str], object]) -> None:
        self._audited = audited  # path → truthy when the path is audited
        # Identity values found valid before (users and apps recur from batch to batch): a
        # batch's distinct ids are checked only when some are new. Bounded: cleared when full.
        self._valid_ids: set[str] = set()

    def __call__(self, batch: RecordBatch) -> None:
        if batch.source != "nginx":
            self._other_source(batch)
            return
        # Values repeat across a batch (a few methods, statuses, users), so each check looks at
        # the distinct values first and visits rows only when some value is bad.
        found: dict[int, list[str]] = {}
        methods = batch.method
        if not set(methods) <= _KNOWN_METHODS:
            _visit(found, methods, _method_problem)
        paths = batch.path
        distinct_paths = set(paths)
        bad_paths = {p for p in distinct_paths if _path_problem(p)}
        if bad_paths:
            _visit(found, paths, _path_problem)
        audited_paths = {p for p in distinct_paths - bad_paths if self._audited(p)}
        audited = list(compress(range(len(paths)), map(audited_paths.__contains__, paths)))
        if any(_status_problem(c, ()) for c in set(batch.status)):
            _visit(found, batch.status, _status_problem, batch.unparsed)
        if None in batch.time_unix_nano:
            _visit(found, batch.time_unix_nano, _time_problem, batch.unparsed)
        if audited:
            for name, column in (("user_id", batch.user_id), ("app_id", batch.app_id)):
                values = list(map(column.__getitem__, audited))
                bad = self._identity_problems(name, set(values))
                if bad:
                    for i in compress(audited, map(bad.__contains__, values)):
                        found.setdefault(i, []).append(bad[column[i]])
        _unparsed(batch, found)
        _record(batch, found)

    def _identity_problems(self, name: str, distinct: set[str | None]) -> dict[str | None, str]:
        """The problem of each bad value among a column's distinct identity values."""
        new = distinct - self._valid_ids
        if not new:
            return {}
        bad = {v: p for v in new if (p := _identity_problem(name, v))}
        if len(self._valid_ids) + len(new) > _VALID_IDS_KEPT:
            self._valid_ids.clear()
        self._valid_ids.update(new.difference(bad))  # type: ignore[arg-type]
        return bad

    def _other_source(self, batch: RecordBatch) -> None:
        """App and database records: an app record that describes a request (has a method,
        path or status) is checked like an access record; every record needs a valid time; a
        database statement needs its role (user_id)."""
        found: dict[int, list[str]] = {}
        for i in range(len(batch)):
            method, path, status = batch.method[i], batch.path[i], batch.status[i]
            unparsed = batch.unparsed[i]
            problems = []
            if method is not None or path is not None or status is not None:
                problems += [_method_problem(method), _path_problem(path),
                             _status_problem(status, unparsed)]
            problems.append(_time_problem(batch.time_unix_nano[i], unparsed))
            if path is not None and not _path_problem(path) and self._audited(path):
                problems += [_identity_problem("user_id", batch.user_id[i]),
                             _identity_problem("app_id", batch.app_id[i])]
            elif batch.source == "pgaudit":
                problems.append(_identity_problem("user_id", batch.user_id[i]))
            problems = [p for p in problems if p]
            if problems:
                found[i] = problems
        _unparsed(batch, found)
        _record(batch, found)


# One rule per field, each returning the flag for a bad value or None: the columnar and the
# per-record paths above apply the same rules.
def _method_problem(method: str | None) -> str | None:
    if method is None:
        return flags.missing_field("method")
    if method not in _KNOWN_METHODS and _METHOD.fullmatch(method) is None:
        return flags.invalid_field("method")
    return None


def _path_problem(path: str | None) -> str | None:
    if path is None:
        return flags.missing_field("path")
    if path[:1] != "/" and path != "*":
        return flags.invalid_field("path")
    return None


def _status_problem(code: int | None, unparsed: tuple[str, ...]) -> str | None:
    if code is not None and 100 <= code <= 599:
        return None
    bad = code is not None or "status" in unparsed
    return flags.invalid_field("status") if bad else flags.missing_field("status")


def _time_problem(time_ns: int | None, unparsed: tuple[str, ...]) -> str | None:
    if time_ns is not None:
        return None
    return flags.invalid_field("time") if "time" in unparsed else flags.missing_field("time")


def _identity_problem(name: str, value: str | None) -> str | None:
    if value is None:
        return flags.missing_field(name)
    return None if _identity_ok(value) else flags.invalid_field(name)


def _visit(found: dict[int, list[str]], column: list[Any], rule: Callable[..., str | None],
           unparsed: list[tuple[str, ...]] | None = None) -> None:
    """Apply a field rule to every row of a column (the slow path, when some value is bad)."""
    for i, value in enumerate(column):
        problem = rule(value, unparsed[i]) if unparsed is not None else rule(value)
        if problem:
            found.setdefault(i, []).append(problem)


def _unparsed(batch: RecordBatch, found: dict[int, list[str]]) -> None:
    """Every field a source could not parse or found out of range (audit_guard.grammar.ranges)
    is `invalid_field:<name>`, whichever field it is: it replaces a `missing_field:<name>` the
    rules above gave for the now absent value."""
    if not any(batch.unparsed):
        return
    for i, names in enumerate(batch.unparsed):
        if not names:
            continue
        problems = found.setdefault(i, [])
        for name in names:
            invalid = flags.invalid_field(name)
            if invalid in problems:
                continue
            missing = flags.missing_field(name)
            if missing in problems:
                problems[problems.index(missing)] = invalid
            else:
                problems.append(invalid)


def _record(batch: RecordBatch, found: dict[int, list[str]]) -> None:
    for i in sorted(found):
        batch.violations.setdefault(i, []).extend(found[i])
        for flag in found[i]:
            batch.add_flag(i, flag)
