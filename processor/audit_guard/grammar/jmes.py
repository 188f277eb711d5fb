"""JMESPath expressions compiled once into plain-Python callables: the one JMESPath compiler,
used by the audit rules (audit_guard.rules) and by the app source's field maps
(audit_guard.sources.app.FieldMapping), so an expression is accepted, refused and evaluated the
same way in both.

`jmespath.compile(expr).search(obj)` builds a new TreeInterpreter and walks the AST through
dict lookups and a visitor dispatch on every call: ~2-10 µs per record and expression, far over
the rules' budget. `compile_expression` walks the AST ONCE and turns each node into a closure,
so evaluating is a few Python calls per node.

Fidelity is the contract: for every input the closure returns what the library returns, or
raises the exception class the library raises. The rules:

* Nodes compiled natively: field, subexpression, pipe, index_expression, index, current,
  identity, literal, comparator (eq, ne, lt, lte, gt, gte), and_expression, or_expression,
  not_expression, function_expression. Functions take a native path for the argument types
  they are normally given (`starts_with`/`ends_with` on strings, `contains` on a list or on two
  strings, `length` on str/list/dict, `to_string` on a string, `to_number` on a number); every
  other call, and every other argument type, goes through the library's own `Functions`
  (same type checks, same JMESPathTypeError).
* Every other node (projections, filters, flatten, slices, multi-selects, exprefs, …) is handed
  to the library's TreeInterpreter for that subtree only: the result is the library's by
  construction, and the rest of the expression keeps the fast path.
* Unknown functions and wrong argument counts fail at run time in the library; here they are
  refused at compile time (`ExpressionError`), because a rule that can never evaluate is a
  configuration error, not a per-record one.

`root_reads` says which top-level keys of the record an expression reads (None: it reads the
record as a whole, e.g. through `@`), which lets a batch be evaluated once per DISTINCT
combination of those values instead of once per row (see audit_guard.rules.ruleset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath import functions as jp_functions
from jmespath.exceptions import (
    EmptyExpressionError,
    IncompleteExpressionError,
    JMESPathError,
    LexerError,
    ParseError,
)

from .jmes_nodes import NATIVE_NODE_TYPES, Evaluator, compile_node, is_truthy

__all__ = [
    "NATIVE_NODE_TYPES",
    "CompiledExpression",
    "Evaluator",
    "ExpressionError",
    "compile_expression",
    "is_truthy",
    "root_reads",
]

_FUNCTION_TABLE: dict[str, dict[str, Any]] = jp_functions.Functions.FUNCTION_TABLE


class ExpressionError(ValueError):
    """An expression that does not compile: `position` is the 0-based character offset."""

    def __init__(self, reason: str, position: int, near: str | None) -> None:
        where = f"at position {position}" + (f" near {near!r}" if near else "")
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.position = position
        self.near = near


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    expression: str
    ast: dict[str, Any]
    evaluate: Evaluator  # record view → value, as jmespath.search would give
    # Top-level keys read (None: the whole record); what batch evaluation keys on.
    reads: frozenset[str] | None
    # The operands of a top-level `a && b && …` chain, in order, each with its own reads: a
    # batch can then filter rows conjunct by conjunct. One element when there is no chain.
    conjuncts: tuple[tuple[Evaluator, frozenset[str] | None], ...]
    # Node types handed to the library's interpreter (empty: fully native).
    fallback_nodes: frozenset[str]

    def search(self, value: Any) -> Any:
        return self.evaluate(value)

    def matches(self, value: Any) -> bool:
        return is_truthy(self.evaluate(value))


# -- compilation ----------------------------------------------------------------------------------


def compile_expression(expression: str) -> CompiledExpression:
    """Parse and compile `expression`; raises ExpressionError naming the position."""
    if not isinstance(expression, str):
        raise ExpressionError(f"expected a string, got {type(expression).__name__}", 0, None)
    try:
        ast = jmespath.compile(expression).parsed
    except JMESPathError as exc:
        raise _expression_error(expression, exc) from None
    _check_functions(ast, expression)
    fallback: set[str] = set()
    evaluate = compile_node(ast, fallback)
    conjuncts = tuple((compile_node(node, set()), root_reads(node)) for node in _and_chain(ast))
    return CompiledExpression(
        expression=expression,
        ast=ast,
        evaluate=evaluate,
        reads=root_reads(ast),
        conjuncts=conjuncts,
        fallback_nodes=frozenset(fallback),
    )


def _expression_error(expression: str, exc: JMESPathError) -> ExpressionError:
    if isinstance(exc, LexerError):
        return ExpressionError(exc.message, exc.lexer_position, exc.lexer_value)
    if isinstance(exc, IncompleteExpressionError):
        return ExpressionError("the expression is incomplete", len(expression), None)
    if isinstance(exc, ParseError):
        near = None if exc.token_value is None else str(exc.token_value)
        return ExpressionError(exc.msg, exc.lex_position, near)
    if isinstance(exc, EmptyExpressionError):
        return ExpressionError("the expression is empty", 0, None)
    return ExpressionError(str(exc), 0, None)


def _check_functions(node: dict[str, Any], expression: str) -> None:
    """Unknown functions and wrong arities: the parser accepts them, every search fails."""
    if node.get("type") == "function_expression":
        name = node["value"]
        spec = _FUNCTION_TABLE.get(name)
        # The AST keeps no positions: point at the first occurrence of the call.
        position = max(expression.find(name + "("), 0)
        if spec is None:
            raise ExpressionError(f"unknown function {name}()", position, name)
        signature = spec["signature"]
        given = len(node["children"])
        variadic = bool(signature) and signature[-1].get("variadic")
        if (given < len(signature)) if variadic else (given != len(signature)):
            expected = f"at least {len(signature)}" if variadic else str(len(signature))
            raise ExpressionError(
                f"function {name}() takes {expected} argument(s), {given} given", position, name
            )
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _check_functions(child, expression)


def _and_chain(node: dict[str, Any]) -> list[dict[str, Any]]:
    # `a && b && c` parses as and(and(a, b), c); for truthiness and for which operand raises,
    # evaluating the flattened operands left to right, stopping at the first false, is the same.
    if node["type"] == "and_expression":
        left, right = node["children"]
        return _and_chain(left) + _and_chain(right)
    return [node]


def root_reads(node: dict[str, Any]) -> frozenset[str] | None:
    """The top-level keys `node` reads when evaluated against the record; None when it may read
    the record as a whole (`@` at the top, or a node type not analysed here)."""
    kind = node["type"]
    children = node.get("children", ())
    if kind == "field":
        return frozenset((node["value"],))
    if kind == "literal":
        return frozenset()
    if kind in ("subexpression", "pipe", "index_expression", "projection", "value_projection",
                "filter_projection", "flatten"):
        # Only the first child sees the record; the others see what it produced.
        return root_reads(children[0])
    if kind in ("comparator", "and_expression", "or_expression", "not_expression",
                "function_expression", "multi_select_list", "multi_select_dict", "key_val_pair"):
        reads: set[str] = set()
        for child in children:
            sub = root_reads(child)
            if sub is None:
                return None
            reads |= sub
        return frozenset(reads)
    if kind == "expref":
        # An expression reference is applied by its function to the elements of another
        # argument, whose reads are counted there.
        return frozenset()
    return None  # current / identity at the top, or anything unknown: the whole record


