"""Batch evaluation of rules (`RuleSet.evaluate`), built for the pipeline's hot path.

A rule's top-level `a && b && …` operands are applied in order; each one is evaluated once per
DISTINCT value (tuple) of the columns it reads among the rows still in play, and the verdicts are
mapped back to rows with C-level `map`/`compress` passes. Audit columns repeat heavily within a
batch (a few statuses, methods, users), and the first operand is usually selective, so most rules
cost a `set()` and a `map()` over one column per batch. Operands that read `fields`, or the
record as a whole (`@`), are evaluated per remaining row on a full record view.

Evaluation errors (e.g. `starts_with` given a number): the rule does not match that record and
the error is counted per rule; the record itself is never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress
from typing import Any

from ..grammar.jmes import CompiledExpression, Evaluator, is_truthy
from ..record import RecordBatch
from .rule import COLUMN_KEYS, PER_ROW_KEYS, batch_ages, batch_record_view

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


def plan(compiled: CompiledExpression) -> tuple[_Step, ...]:
    steps = []
    for evaluate, reads in compiled.conjuncts:
        if reads is None or reads & PER_ROW_KEYS:
            steps.append(_Step(evaluate, _ROWS, ()))
            continue
        # Keys outside COLUMN_KEYS are `source` (one per batch) or keys the view does not
        # have (always null): both are the same for every row.
        names = tuple(sorted(reads & COLUMN_KEYS))
        steps.append(_Step(evaluate, _COLUMNS if names else _CONST, names))
    return tuple(steps)


class BatchColumns:
    """The batch's columns as rules read them, built lazily and shared by the rules."""

    def __init__(self, batch: RecordBatch) -> None:
        self.batch = batch
        self.base = {"source": batch.source}
        self._flags: list[tuple[str, ...]] | None = None
        self._ages: list[int | None] | None = None
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
        if name == "age_s":
            if self._ages is None:
                self._ages = batch_ages(self.batch)
            return self._ages
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


def verdict(evaluate: Evaluator, view: Any) -> bool | None:
    """True/False, or None when the expression raised for this record."""
    try:
        return is_truthy(evaluate(view))
    except Exception:  # any failure of a rule on a record: no match, counted (module doc)
        return None


def run_rule(steps: tuple[_Step, ...], cols: BatchColumns) -> tuple[list[int], int]:
    """(rows the rule matches, in order; number of rows it raised on)."""
    size = len(cols.batch)
    rows: list[int] | range = range(size)
    errored = 0
    for step in steps:
        if step.kind == _CONST:
            ok = verdict(step.evaluate, cols.base)
            if not ok:
                errored += len(rows) if ok is None else 0
                return [], errored
            continue
        if step.kind == _ROWS:
            kept = []
            for i in rows:
                ok = verdict(step.evaluate, cols.view(i))
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
                verdicts = [verdict(step.evaluate, _key_view(cols.base, names, k)) for k in keys]
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
        local[key] = get(key) if key in memo else verdict(
            step.evaluate, _key_view(base, step.names, key)
        )
    if len(memo) + len(local) > _MEMO_LIMIT:
        memo.clear()
    memo.update(local)
    # Map through the local table: another thread may clear the shared memo meanwhile.
    return list(map(local.__getitem__, keys))


