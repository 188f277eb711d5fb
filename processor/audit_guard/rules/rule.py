"""A rule: its fields, the record view its `when` is evaluated against, and reading rules from
YAML.

A rule file is a YAML list of `{name, description, when, severity, labels}`. A rule matches a
record when `when` is truthy in JMESPath's sense (not false, null, '', [] or {}) over the record
view (`record_view`): user_id, app_id, method, path, route, status, source, flags, fields, and
age_s: whole seconds (rounded away from zero) from the record's own time to when audit-guard
received it (serve: when the collector read the request; replay: the event-time clock), negative
for a record stamped ahead of that, null when either time is unknown. JMESPath has no arithmetic,
so the one subtraction a freshness rule needs is made here (the seed article's §4.4:
`age_s > `35` || age_s < `-5``).

Loading is all or nothing: a set with ANY error (bad YAML, a missing key, a bad severity, a
duplicate name, an expression that does not compile) is refused as a whole with a RuleError
listing every problem, so a half-valid file never silently drops the rules it failed on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from .. import flags as flag_vocabulary
from ..grammar.jmes import CompiledExpression, ExpressionError, compile_expression, is_truthy
from ..record import AuditRecord, RecordBatch

SEVERITIES = ("info", "low", "medium", "high", "critical")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_MAX_NAME = 128
_REQUIRED = ("name", "when", "severity")
_KNOWN_KEYS = frozenset({"name", "description", "when", "severity", "labels"})

# The record as rules see it.
VIEW_KEYS = ("user_id", "app_id", "method", "path", "route", "status", "source", "flags", "fields",
             "age_s")
# Keys whose per-row values are hashable (flags as a tuple), so a batch can be evaluated per
# distinct value. `source` is one value per batch; `fields` is a dict: evaluated per row.
COLUMN_KEYS = frozenset(
    {"user_id", "app_id", "method", "path", "route", "status", "flags", "age_s"}
)
PER_ROW_KEYS = frozenset({"fields"})


class RuleError(Exception):
    """A rule set that cannot be loaded; `errors` holds every problem found, one line each."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    severity: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    source: str = "<string>"  # the file it came from
    index: int = 0  # 1-based position in that file
    compiled: CompiledExpression | None = field(default=None, compare=False, repr=False)

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether the rule matches one record view (raises what JMESPath raises)."""
        assert self.compiled is not None
        return is_truthy(self.compiled.evaluate(record))

    @property
    def flag(self) -> str:
        return flag_vocabulary.rule(self.name)


def record_view(record: AuditRecord) -> dict[str, Any]:
    """The dict a rule's `when` is evaluated against, for one AuditRecord."""
    return {
        "user_id": record.user_id,
        "app_id": record.app_id,
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "status": record.status,
        "source": record.source,
        "flags": list(record.flags),
        "fields": _plain(record.fields),
        "age_s": None,  # a lone record has no receive time (the batch has: batch_record_view)
    }


def age_s(received_unix_nano: int | None, time_unix_nano: int | None) -> int | None:
    """Whole seconds from a record's time to its receive time, rounded AWAY from zero: then
    `age_s > N` is exactly "more than N s old" and `age_s < -N` exactly "more than N s ahead"
    for a whole N (35 s is 35, 35 s + 1 ns is 36; -5 s is -5, -5 s - 1 ns is -6), and a batch
    has few distinct ages, so a rule on age_s is evaluated per distinct age, memoised."""
    if received_unix_nano is None or not time_unix_nano:
        return None
    diff = received_unix_nano - time_unix_nano
    return -(-diff // 1_000_000_000) if diff >= 0 else diff // 1_000_000_000


def batch_ages(batch: RecordBatch) -> list[int | None]:
    """The `age_s` column of a batch."""
    received = batch.received_unix_nano
    if received is None:
        return [None] * len(batch)
    return [age_s(received, t) for t in batch.time_unix_nano]


def batch_record_view(batch: RecordBatch, i: int) -> dict[str, Any]:
    """`record_view` of row i of a batch, without building the AuditRecord."""
    return {
        "user_id": batch.user_id[i],
        "app_id": batch.app_id[i],
        "method": batch.method[i],
        "path": batch.path[i],
        "route": batch.route[i],
        "status": batch.status[i],
        "source": batch.source,
        "flags": list(batch.flags.get(i, ())),
        "fields": _plain(batch.fields[i]),
        "age_s": age_s(batch.received_unix_nano, batch.time_unix_nano[i]),
    }


def _plain(fields: Any) -> Any:
    """A record's fields as a dict (nginx lines of the shipped format are AuditJsonLine)."""
    return fields if isinstance(fields, dict) else fields.to_dict()


# -- loading --------------------------------------------------------------------------------------


def rule_location(name: Any, source: str, index: int) -> str:
    if isinstance(name, str) and name:
        return f"rule {name!r} (file {source}, rule #{index})"
    return f"rule #{index} (file {source})"


def _parse_rule(raw: Any, source: str, index: int, errors: list[str]) -> Rule | None:
    if not isinstance(raw, dict):
        errors.append(f"{rule_location(None, source, index)}: expected a mapping with keys "
                      f"{', '.join(sorted(_KNOWN_KEYS))}, got {type(raw).__name__}")
        return None
    name = raw.get("name")
    where = rule_location(name, source, index)
    found: list[str] = []
    for key in _REQUIRED:
        if key not in raw or raw[key] is None:
            found.append(f"{where}: missing key `{key}`")
    unknown = sorted(str(k) for k in raw if k not in _KNOWN_KEYS)
    if unknown:
        found.append(f"{where}: unknown key(s) {', '.join(f'`{k}`' for k in unknown)} "
                     f"(expected {', '.join(sorted(_KNOWN_KEYS))})")
    if name is not None and (
        not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > _MAX_NAME
    ):
        found.append(f"{where}: `name` must match {NAME_PATTERN.pattern} "
                     f"(at most {_MAX_NAME} characters), got {name!r}")
    severity = raw.get("severity")
    if severity is not None and severity not in SEVERITIES:
        found.append(f"{where}: `severity` must be one of {', '.join(SEVERITIES)}, "
                     f"got {severity!r}")
    description = raw.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        found.append(f"{where}: `description` must be a string, got {type(description).__name__}")
    labels = raw.get("labels")
    if labels is None:
        labels = {}
    elif not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        # YAML turns `yes`, `1` or `2024-01-01` into non-strings: quote label values.
        found.append(f"{where}: `labels` must map strings to strings (quote values such as "
                     f"'yes' or '1'), got {labels!r}")
    when = raw.get("when")
    compiled = None
    if when is not None:
        if not isinstance(when, str):
            found.append(f"{where}: `when` must be a string, got {type(when).__name__}")
        else:
            compiled = compile_when(when, where, found)
    if found:
        errors.extend(found)
        return None
    return Rule(name=name, when=when, severity=severity, description=description,
                labels=MappingProxyType(dict(labels)), source=source, index=index,
                compiled=compiled)


def compile_when(when: str, where: str, errors: list[str]) -> CompiledExpression | None:
    try:
        return compile_expression(when)
    except ExpressionError as exc:
        errors.append(f"{where}: `when` is not valid JMESPath {exc} (expression: {when!r})")
        return None


def parse_text(
    text: str, source: str, errors: list[str]
) -> tuple[list[Rule], list[tuple[str, str, int]]]:
    """The file's valid rules and the (name, file, index) of every named entry."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(f"file {source}: not valid YAML{at}: {problem}")
        return [], []
    if not isinstance(data, list):
        # An empty file is refused too: a rules file emptied by mistake must not silently
        # switch every rule off (write `[]` for "no rules").
        errors.append(f"file {source}: expected a YAML list of rules, got "
                      f"{'an empty file' if data is None else type(data).__name__}")
        return [], []
    rules = []
    for index, raw in enumerate(data, start=1):
        rule = _parse_rule(raw, source, index, errors)
        if rule is not None:
            rules.append(rule)
    return rules, _named(data, source)


def find_duplicates(entries: Iterable[tuple[str, str, int]], errors: list[str]) -> None:
    """`entries`: (name, file, index) of every rule that has a name, valid or not, so that a
    duplicate is reported even next to the other errors of its rule."""
    seen: dict[str, tuple[str, int]] = {}
    for name, source, index in entries:
        first = seen.get(name)
        if first is None:
            seen[name] = (source, index)
        else:
            errors.append(f"{rule_location(name, source, index)}: duplicate name; first "
                          f"defined in file {first[0]}, rule #{first[1]}")


def _named(data: list[Any], source: str) -> list[tuple[str, str, int]]:
    return [(raw["name"], source, index) for index, raw in enumerate(data, start=1)
            if isinstance(raw, dict) and isinstance(raw.get("name"), str)]


