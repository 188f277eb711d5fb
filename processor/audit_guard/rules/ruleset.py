"""Audit rules: named JMESPath conditions over the normalized audit record.

`RuleSet` is an immutable, compiled set of rules; `RuleRegistry` holds the active one and counts
matches. What a rule is and how rule files are read (all or nothing): `rules/rule.py`. How a
batch is evaluated (per distinct column value, memoised) and what happens when a rule raises on
a record (no match, counted per rule; the record is never dropped): `rules/batch.py`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Any

from .. import flags as flag_vocabulary
from ..record import AuditRecord, RecordBatch
from .batch import BatchColumns, plan, run_rule, verdict
from .rule import (
    COLUMN_KEYS,
    SEVERITIES,
    VIEW_KEYS,
    Rule,
    RuleError,
    batch_record_view,
    compile_when,
    find_duplicates,
    parse_text,
    record_view,
    rule_location,
)

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

# -- the rule set ---------------------------------------------------------------------------------


class RuleSet:
    """An immutable, compiled, validated set of rules, in file order."""

    __slots__ = ("_rules", "_plans", "_by_name")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        rules = tuple(rules)
        errors: list[str] = []
        find_duplicates(((r.name, r.source, r.index) for r in rules), errors)
        compiled = []
        for rule in rules:
            if rule.compiled is None:  # a Rule built by hand: compile it here
                location = rule_location(rule.name, rule.source, rule.index)
                expression = compile_when(rule.when, location, errors)
                if expression is None:
                    continue
                rule = replace(rule, compiled=expression)
            compiled.append(rule)
        if errors:
            raise RuleError(errors)
        self._rules: tuple[Rule, ...] = tuple(compiled)
        self._plans = tuple(plan(r.compiled) for r in self._rules)  # type: ignore[arg-type]
        self._by_name = {r.name: r for r in self._rules}

    # construction --------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, text: str, source_name: str = "<string>") -> RuleSet:
        errors: list[str] = []
        rules, names = parse_text(text, source_name, errors)
        find_duplicates(names, errors)
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
            found, found_names = parse_text(text, str(path), errors)
            rules += found
            names += found_names
        find_duplicates(names, errors)
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
        cols = BatchColumns(batch)
        for rule, steps in zip(self._rules, self._plans, strict=True):
            rows, errored = run_rule(steps, cols)
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
            ok = verdict(rule.compiled.evaluate, view)
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
