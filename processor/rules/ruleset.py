"""Audit rules: named JMESPath conditions over the normalized audit record.

A rule file is a YAML list of `{name, description, when, severity, labels}`. A rule matches a
record when `when` is truthy in JMESPath's sense (not false, null, '', [] or {}) over the record
view (`record_view`): user_id, app_id, method, path, route, status, source, flags, fields.

Loading is all or nothing: a set with ANY error (bad YAML, a missing key, a bad severity, a
duplicate name, an expression that does not compile) is refused as a whole with a RuleError
listing every problem, so a half-valid file never silently drops the rules it failed on.

Evaluation errors (e.g. `starts_with` given a number): the rule does not match that record and
the error is counted per rule; the record itself is never dropped.

Batch evaluation (`RuleSet.evaluate`) is built for the pipeline's hot path. A rule's top-level
`a && b && …` operands are applied in order; each one is evaluated once per DISTINCT value
(tuple) of the columns it reads among the rows still in play, and the verdicts are mapped back
to rows with C-level `map`/`compress` passes. Audit columns repeat heavily within a batch (a
few statuses, methods, users), and the first operand is usually selective, so most rules cost
a `set()` and a `map()` over one column per batch. Operands that read `fields`, or the record as
a whole (`@`), are evaluated per remaining row on a full record view.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from itertools import chain, compress
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .. import flags as flag_vocabulary
from ..grammar.jmes import (
    CompiledExpression,
    Evaluator,
    ExpressionError,
    compile_expression,
    is_truthy,
)
from ..record import AuditRecord, RecordBatch

__all__ = [
    "COLUMN_KEYS",
    "SEVERITIES",
    "VIEW_KEYS",
    "Rule",
    "RuleError",
    "RuleRegistry",
    "RuleSet",
    "batch_record_view",
    "record_view",
]

SEVERITIES = ("info", "low", "medium", "high", "critical")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_MAX_NAME = 128
_REQUIRED = ("name", "when", "severity")
_KNOWN_KEYS = frozenset({"name", "description", "when", "severity", "labels"})

# The record as rules see it.
VIEW_KEYS = ("user_id", "app_id", "method", "path", "route", "status", "source", "flags", "fields")
# Keys whose per-row values are hashable (flags as a tuple), so a batch can be evaluated per
# distinct value. `source` is one value per batch; `fields` is a dict: evaluated per row.
COLUMN_KEYS = frozenset({"user_id", "app_id", "method", "path", "route", "status", "flags"})
_PER_ROW_KEYS = frozenset({"fields"})


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
    }


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
    }


def _plain(fields: Any) -> Any:
    """A record's fields as a dict (nginx lines of the shipped format are AuditJsonLine)."""
    return fields if isinstance(fields, dict) else fields.to_dict()


# -- loading --------------------------------------------------------------------------------------


def _where(name: Any, source: str, index: int) -> str:
    if isinstance(name, str) and name:
        return f"rule {name!r} (file {source}, rule #{index})"
    return f"rule #{index} (file {source})"


def _parse_rule(raw: Any, source: str, index: int, errors: list[str]) -> Rule | None:
    if not isinstance(raw, dict):
        errors.append(f"{_where(None, source, index)}: expected a mapping with keys "
                      f"{', '.join(sorted(_KNOWN_KEYS))}, got {type(raw).__name__}")
        return None
    name = raw.get("name")
    where = _where(name, source, index)
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
            compiled = _compile(when, where, found)
    if found:
        errors.extend(found)
        return None
    return Rule(name=name, when=when, severity=severity, description=description,
                labels=MappingProxyType(dict(labels)), source=source, index=index,
                compiled=compiled)


def _compile(when: str, where: str, errors: list[str]) -> CompiledExpression | None:
    try:
        return compile_expression(when)
    except ExpressionError as exc:
        errors.append(f"{where}: `when` is not valid JMESPath {exc} (expression: {when!r})")
        return None


def _parse_text(
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


def _duplicates(entries: Iterable[tuple[str, str, int]], errors: list[str]) -> None:
    """`entries`: (name, file, index) of every rule that has a name, valid or not, so that a
    duplicate is reported even next to the other errors of its rule."""
    seen: dict[str, tuple[str, int]] = {}
    for name, source, index in entries:
        first = seen.get(name)
        if first is None:
            seen[name] = (source, index)
        else:
            errors.append(f"{_where(name, source, index)}: duplicate name; first "
                          f"defined in file {first[0]}, rule #{first[1]}")


def _named(data: list[Any], source: str) -> list[tuple[str, str, int]]:
    return [(raw["name"], source, index) for index, raw in enumerate(data, start=1)
            if isinstance(raw, dict) and isinstance(raw.get("name"), str)]


# -- evaluation plans -----------------------------------------------------------------------------

_CONST, _COLUMNS, _ROWS = 0, 1, 2


# Verdicts of a step are memoised across batches (per source, the one batch-wide value a step
# may read): in steady state a batch then costs one C-level map over the column per step, no
# Python call per distinct value. Bounded: a high-cardinality column (ids in paths) starts the
# memo afresh when it grows past this, which costs one batch's distinct evaluations.
_MEMO_LIMIT = 32_768
_UNSEEN = object()


@dataclass(frozen=True, slots=True)
class _Step:
    """One operand of a rule's top-level && chain and how a batch evaluates it."""

    evaluate: Evaluator
    kind: int  # _CONST: one value per batch; _COLUMNS: per distinct value; _ROWS: per row
    names: tuple[str, ...]  # _COLUMNS: the columns keyed on
    # source → {key: True (match) / False / None (raised)}. Keys are column values; the
    # columns are typed (int status, str ids), so no True-vs-1 key collisions arise.
    memo: dict[str, dict[Any, bool | None]] = field(default_factory=dict)


def _plan(compiled: CompiledExpression) -> tuple[_Step, ...]:
    steps = []
    for evaluate, reads in compiled.conjuncts:
        if reads is None or reads & _PER_ROW_KEYS:
            steps.append(_Step(evaluate, _ROWS, ()))
            continue
        # Keys outside COLUMN_KEYS are `source` (one per batch) or keys the view does not
        # have (always null): both are the same for every row.
        names = tuple(sorted(reads & COLUMN_KEYS))
        steps.append(_Step(evaluate, _COLUMNS if names else _CONST, names))
    return tuple(steps)


class _BatchColumns:
    """The batch's columns as rules read them, built lazily and shared by the rules."""

    def __init__(self, batch: RecordBatch) -> None:
        self.batch = batch
        self.base = {"source": batch.source}
        self._flags: list[tuple[str, ...]] | None = None
        self._views: dict[int, dict[str, Any]] = {}
        self._distinct: dict[str, set[Any] | None] = {}

    def column(self, name: str) -> list[Any]:
        if name == "flags":
            if self._flags is None:
                col: list[tuple[str, ...]] = [()] * len(self.batch)
                for i, found in self.batch.flags.items():
                    col[i] = tuple(found)
                self._flags = col
            return self._flags
        return getattr(self.batch, name)  # type: ignore[no-any-return]

    def distinct(self, name: str) -> set[Any] | None:
        """The distinct values of a whole column when there are few (None: many, or
        unhashable)."""
        if name not in self._distinct:
            try:
                values = set(self.column(name))
            except TypeError:
                values = None
            self._distinct[name] = values if values is not None and len(values) <= 64 else None
        return self._distinct[name]

    def view(self, i: int) -> dict[str, Any]:
        view = self._views.get(i)
        if view is None:
            view = self._views[i] = batch_record_view(self.batch, i)
        return view


def _key_view(base: dict[str, Any], names: tuple[str, ...], key: Any) -> dict[str, Any]:
    view = dict(base)
    if len(names) == 1:
        view[names[0]] = key
    else:
        view.update(zip(names, key, strict=True))
    if "flags" in view:
        view["flags"] = list(view["flags"])
    return view


def _verdict(evaluate: Evaluator, view: Any) -> bool | None:
    """True/False, or None when the expression raised for this record."""
    try:
        return is_truthy(evaluate(view))
    except Exception:  # any failure of a rule on a record: no match, counted (module doc)
        return None


def _run_rule(steps: tuple[_Step, ...], cols: _BatchColumns) -> tuple[list[int], int]:
    """(rows the rule matches, in order; number of rows it raised on)."""
    size = len(cols.batch)
    rows: list[int] | range = range(size)
    errored = 0
    for step in steps:
        if step.kind == _CONST:
            ok = _verdict(step.evaluate, cols.base)
            if not ok:
                errored += len(rows) if ok is None else 0
                return [], errored
            continue
        if step.kind == _ROWS:
            kept = []
            for i in rows:
                ok = _verdict(step.evaluate, cols.view(i))
                if ok:
                    kept.append(i)
                elif ok is None:
                    errored += 1
            rows = kept
        else:
            names = step.names
            full = [cols.column(n) for n in names]
            every = len(rows) == size
            if len(names) == 1:
                keys: list[Any] = full[0] if every else list(map(full[0].__getitem__, rows))
            elif every:
                keys = list(zip(*full, strict=True))
            else:
                keys = list(zip(*(map(c.__getitem__, rows) for c in full), strict=True))
            memo = step.memo.get(cols.batch.source)
            if memo is None:
                memo = step.memo[cols.batch.source] = {}
            if every and len(names) == 1:
                # Over a whole column with few distinct values (status, method, source), the
                # batch's distinct set (shared by the rules) usually decides alone: no value
                # matches (auth_failure on a batch without 401) or all do. Saves a map pass.
                distinct = cols.distinct(names[0])
                if distinct is not None:
                    seen = [memo.get(v, _UNSEEN) for v in distinct]
                    if _UNSEEN not in seen and None not in seen:
                        if True not in seen:
                            return [], errored
                        if False not in seen:
                            continue
            try:
                verdicts = list(map(memo.__getitem__, keys))
            except KeyError:  # values not seen yet (or a memo just cleared): evaluate them
                verdicts = _fill(step, memo, keys, cols.base)
            except TypeError:  # an unhashable value where a scalar was expected: row by row
                verdicts = [_verdict(step.evaluate, _key_view(cols.base, names, k)) for k in keys]
            if None in verdicts:
                errored += verdicts.count(None)
            rows = list(compress(rows, verdicts))
        if not rows:
            return [], errored
    return list(rows), errored


def _fill(
    step: _Step, memo: dict[Any, bool | None], keys: list[Any], base: dict[str, Any]
) -> list[bool | None]:
    """Verdicts for `keys`, evaluating each distinct value the memo lacks once."""
    local: dict[Any, bool | None] = {}
    get = memo.get
    for key in set(keys):
        # `in` rather than get(): None is a stored verdict (the rule raised).
        local[key] = get(key) if key in memo else _verdict(
            step.evaluate, _key_view(base, step.names, key)
        )
    if len(memo) + len(local) > _MEMO_LIMIT:
        memo.clear()
    memo.update(local)
    # Map through the local table: another thread may clear the shared memo meanwhile.
    return list(map(local.__getitem__, keys))


# -- the rule set ---------------------------------------------------------------------------------


class RuleSet:
    """An immutable, compiled, validated set of rules, in file order."""

    __slots__ = ("_rules", "_plans", "_by_name")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        rules = tuple(rules)
        errors: list[str] = []
        _duplicates(((r.name, r.source, r.index) for r in rules), errors)
        compiled = []
        for rule in rules:
            if rule.compiled is None:  # a Rule built by hand: compile it here
                expression = _compile(rule.when, _where(rule.name, rule.source, rule.index),
                                      errors)
                if expression is None:
                    continue
                rule = replace(rule, compiled=expression)
            compiled.append(rule)
        if errors:
            raise RuleError(errors)
        self._rules: tuple[Rule, ...] = tuple(compiled)
        self._plans = tuple(_plan(r.compiled) for r in self._rules)  # type: ignore[arg-type]
        self._by_name = {r.name: r for r in self._rules}

    # construction --------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, text: str, source_name: str = "<string>") -> RuleSet:
        errors: list[str] = []
        rules, names = _parse_text(text, source_name, errors)
        _duplicates(names, errors)
        if errors:
            raise RuleError(errors)
        return cls(rules)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], *, include_builtin: bool = False) -> RuleSet:
        """Every rule of every file (in order), optionally after the built-in rules; names are
        unique across all of them."""
        errors: list[str] = []
        rules: list[Rule] = list(cls.builtin()) if include_builtin else []
        names = [(r.name, r.source, r.index) for r in rules]
        for path in paths:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(f"file {path}: cannot read: {exc}")
                continue
            found, found_names = _parse_text(text, str(path), errors)
            rules += found
            names += found_names
        _duplicates(names, errors)
        if errors:
            raise RuleError(errors)
        return cls(rules)

    @classmethod
    def builtin(cls) -> RuleSet:
        text = resources.files(__package__).joinpath("builtin.yaml").read_text(encoding="utf-8")
        return cls.from_yaml(text, "builtin.yaml")

    # access --------------------------------------------------------------------------------
    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._rules)

    def __iter__(self) -> Any:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __getitem__(self, name: str) -> Rule:
        return self._by_name[name]

    def __repr__(self) -> str:
        return f"RuleSet({list(self.names)!r})"

    # evaluation ----------------------------------------------------------------------------
    def evaluate(
        self, batch: RecordBatch, errors: Counter[str] | None = None
    ) -> dict[int, list[str]]:
        """Row → names of the rules that matched it, in rule order (rows without a match are
        left out, rows in ascending order). Rows a rule raised on are added to
        errors[rule name] when `errors` is given."""
        found: dict[int, list[str]] = {}
        if not len(batch):
            return found
        cols = _BatchColumns(batch)
        for rule, steps in zip(self._rules, self._plans, strict=True):
            rows, errored = _run_rule(steps, cols)
            if errored and errors is not None:
                errors[rule.name] += errored
            name = rule.name
            for i in rows:
                names = found.get(i)
                if names is None:
                    found[i] = [name]
                else:
                    names.append(name)
        return {i: found[i] for i in sorted(found)}

    def evaluate_record(
        self, record: Mapping[str, Any] | AuditRecord, errors: Counter[str] | None = None
    ) -> list[str]:
        """Names of the rules matching one record view (a dict with the VIEW_KEYS, or an
        AuditRecord), in rule order — the admin API's test endpoint."""
        view = record_view(record) if isinstance(record, AuditRecord) else record
        matched = []
        for rule in self._rules:
            assert rule.compiled is not None
            ok = _verdict(rule.compiled.evaluate, view)
            if ok:
                matched.append(rule.name)
            elif ok is None and errors is not None:
                errors[rule.name] += 1
        return matched


class RuleRegistry:
    """The active RuleSet, swapped atomically on reload, and match/error counters.

    Readers take `self.current` once per batch (one attribute read, no lock): a batch is
    evaluated entirely by one set even while a reload happens.
    """

    def __init__(self, initial: RuleSet | None = None) -> None:
        self._current = RuleSet.builtin() if initial is None else initial
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._errors: Counter[str] = Counter()

    @property
    def current(self) -> RuleSet:
        return self._current

    def replace(self, new_set: RuleSet) -> RuleSet:
        """Make `new_set` the active set; returns the previous one."""
        if not isinstance(new_set, RuleSet):
            raise TypeError(f"expected a RuleSet, got {type(new_set).__name__}")
        with self._lock:
            old, self._current = self._current, new_set
        return old

    def load_files(self, paths: Iterable[str | Path], *, include_builtin: bool = False) -> RuleSet:
        """Compile the files and make them active; on any error raise RuleError and keep the
        current set. Returns the new set."""
        new_set = RuleSet.from_files(list(paths), include_builtin=include_builtin)
        self.replace(new_set)
        return new_set

    def evaluate(self, batch: RecordBatch) -> dict[int, list[str]]:
        """`RuleSet.evaluate` with the active set, counting matches and errors."""
        rule_set = self._current
        errors: Counter[str] = Counter()
        found = rule_set.evaluate(batch, errors)
        self._count(rule_set, found.values(), errors)
        return found

    def flag(self, batch: RecordBatch) -> dict[int, list[str]]:
        """`evaluate`, then add a `rule:<name>` flag to every matched row."""
        found = self.evaluate(batch)
        for i, names in found.items():
            for name in names:
                batch.add_flag(i, flag_vocabulary.rule(name))
        return found

    def evaluate_record(self, record: Mapping[str, Any] | AuditRecord) -> list[str]:
        """Matches for one record (not counted: the admin test endpoint is not traffic)."""
        return self._current.evaluate_record(record)

    def _count(
        self, rule_set: RuleSet, matched: Iterable[list[str]], errors: Counter[str]
    ) -> None:
        per_rule = Counter(chain.from_iterable(matched))
        if not per_rule and not errors:
            return
        with self._lock:
            for name, n in per_rule.items():
                self._counts[(name, rule_set[name].severity)] += n
            self._errors.update(errors)

    @property
    def counts(self) -> Counter[tuple[str, str]]:
        """Matches per (rule, severity) since start: audit_rule_matches_total{rule,severity}."""
        with self._lock:
            return Counter(self._counts)

    @property
    def errors(self) -> Counter[str]:
        """Records per rule on which the rule raised (and so did not match)."""
        with self._lock:
            return Counter(self._errors)
