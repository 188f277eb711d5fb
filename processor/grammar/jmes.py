"""JMESPath expressions compiled once into plain-Python callables: the one JMESPath compiler,
used by the audit rules (processor.rules) and by the app source's field maps
(processor.sources.app.FieldMapping), so an expression is accepted, refused and evaluated the
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
combination of those values instead of once per row (see processor.rules.ruleset).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Number
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
from jmespath.visitor import TreeInterpreter

__all__ = [
    "NATIVE_NODE_TYPES",
    "CompiledExpression",
    "Evaluator",
    "ExpressionError",
    "compile_expression",
    "is_truthy",
    "root_reads",
]

Evaluator = Callable[[Any], Any]

# One interpreter for every fallback subtree: ParsedResult.search would build one per call.
# It holds no per-search state (only a method cache), so sharing it across threads is safe.
_INTERPRETER = TreeInterpreter()
_FUNCTIONS = jp_functions.Functions()
_FUNCTION_TABLE: dict[str, dict[str, Any]] = jp_functions.Functions.FUNCTION_TABLE

NATIVE_NODE_TYPES = frozenset({
    "field", "subexpression", "pipe", "index_expression", "index", "current", "identity",
    "literal", "comparator", "and_expression", "or_expression", "not_expression",
    "function_expression",
})
NATIVE_FUNCTIONS = frozenset(
    {"starts_with", "ends_with", "contains", "length", "to_string", "to_number"}
)


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


# -- JMESPath semantics, as jmespath.visitor implements them -------------------------------------


def _is_actual_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, Number)


def _is_comparable(x: Any) -> bool:
    # jmespath ≥ 1.0 orders strings as well as numbers; anything else compares to null.
    return _is_actual_number(x) or isinstance(x, str)


def _equals(x: Any, y: Any) -> bool:
    # JMESPath: 0/1 never equal false/true (Python says 1 == True).
    if _is_actual_number(x) and x in (0, 1):
        if isinstance(y, bool):
            return False
    elif _is_actual_number(y) and y in (0, 1) and isinstance(x, bool):
        return False
    return bool(x == y)


def _is_false(x: Any) -> bool:
    t = type(x)
    if t is str or t is list or t is dict:
        return not x
    if x is None or x is False:
        return True
    # Other types: the library's exact test (equality with '', [] and {}).
    return bool(x == "" or x == [] or x == {})


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, '', [] and {} are false; 0 is true."""
    return not _is_false(value)


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
    evaluate = _compile(ast, fallback)
    conjuncts = tuple((_compile(node, set()), root_reads(node)) for node in _and_chain(ast))
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


def _compile(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    compiler = _COMPILERS.get(node["type"])
    if compiler is None:
        fallback.add(node["type"])
        visit = _INTERPRETER.visit
        return lambda v: visit(node, v)
    return compiler(node, fallback)


def _c_field(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    key = node["value"]

    def field(v: Any) -> Any:
        if type(v) is dict:
            return v.get(key)
        try:  # the library asks any object for .get
            return v.get(key)
        except AttributeError:
            return None

    return field


def _c_chain(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    children = node["children"]
    if all(c["type"] == "field" for c in children):
        keys = tuple(c["value"] for c in children)

        def key_path(v: Any) -> Any:
            for key in keys:
                if type(v) is dict:
                    v = v.get(key)
                else:
                    try:
                        v = v.get(key)
                    except AttributeError:
                        return None
            return v

        return key_path
    fns = [_compile(c, fallback) for c in children]
    if len(fns) == 2:
        first, second = fns
        return lambda v: second(first(v))

    def chain(v: Any) -> Any:
        for fn in fns:
            v = fn(v)
        return v

    return chain


def _c_index(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    index = node["value"]

    def at(v: Any) -> Any:
        if not isinstance(v, list):
            return None
        try:
            return v[index]
        except IndexError:
            return None

    return at


def _c_current(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    return lambda v: v


def _c_literal(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    value = node["value"]
    return lambda v: value


_ORDERING = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}
_FAST_ORDERED = (int, float, str)


def _c_comparator(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    op = node["value"]
    left_node, right_node = node["children"]
    left = _compile(left_node, fallback)
    right = _compile(right_node, fallback)
    literal = right_node["value"] if right_node["type"] == "literal" else None
    plain_literal = right_node["type"] == "literal" and (
        isinstance(literal, str)
        or (_is_actual_number(literal) and literal not in (0, 1))
        or literal is None
    )
    if op in ("eq", "ne"):
        negate = op == "ne"
        if plain_literal:
            # _equals' 0/1-vs-bool special case cannot apply: plain == is the same.
            if negate:
                return lambda v: left(v) != literal
            return lambda v: left(v) == literal
        if negate:
            return lambda v: not _equals(left(v), right(v))
        return lambda v: _equals(left(v), right(v))
    compare = _ORDERING[op]

    def ordered(v: Any) -> Any:
        x = left(v)
        y = right(v)
        if type(x) in _FAST_ORDERED and type(y) in _FAST_ORDERED:
            return compare(x, y)  # may raise TypeError (str vs int), as the library does
        if not (_is_comparable(x) and _is_comparable(y)):
            return None
        return compare(x, y)

    return ordered


def _c_and(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    left, right = (_compile(c, fallback) for c in node["children"])

    def and_(v: Any) -> Any:
        x = left(v)
        return x if _is_false(x) else right(v)

    return and_


def _c_or(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    left, right = (_compile(c, fallback) for c in node["children"])

    def or_(v: Any) -> Any:
        x = left(v)
        return right(v) if _is_false(x) else x

    return or_


def _c_not(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    (child,) = (_compile(c, fallback) for c in node["children"])

    def not_(v: Any) -> Any:
        x = child(v)
        if _is_actual_number(x) and x == 0:  # the library's special case: !0 is false
            return False
        return not x  # Python truthiness, as in the library

    return not_


def _c_function(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    name = node["value"]
    args = [_compile(c, fallback) for c in node["children"]]
    call = _FUNCTIONS.call_function
    if name in ("starts_with", "ends_with") and len(args) == 2:
        subject_fn, affix_fn = args
        method = str.startswith if name == "starts_with" else str.endswith

        def affix(v: Any) -> Any:
            s = subject_fn(v)
            a = affix_fn(v)
            if type(s) is str and type(a) is str:
                return method(s, a)
            return call(name, [s, a])  # raises the library's JMESPathTypeError

        return affix
    if name == "contains" and len(args) == 2:
        subject_fn, search_fn = args

        def contains(v: Any) -> Any:
            s = subject_fn(v)
            x = search_fn(v)
            t = type(s)
            if t is list or (t is str and type(x) is str):
                return x in s
            return call(name, [s, x])

        return contains
    if len(args) == 1 and name in ("length", "to_string", "to_number"):
        (arg,) = args
        fast = {"length": (str, list, dict), "to_string": (str,), "to_number": (int, float)}[name]
        direct: Callable[[Any], Any] = len if name == "length" else (lambda x: x)

        def one(v: Any) -> Any:
            x = arg(v)
            if type(x) in fast:
                return direct(x)
            return call(name, [x])

        return one

    def function(v: Any) -> Any:
        return call(name, [a(v) for a in args])

    return function


_COMPILERS: dict[str, Callable[[dict[str, Any], set[str]], Evaluator]] = {
    "field": _c_field,
    "subexpression": _c_chain,
    "pipe": _c_chain,
    "index_expression": _c_chain,
    "index": _c_index,
    "current": _c_current,
    "identity": _c_current,
    "literal": _c_literal,
    "comparator": _c_comparator,
    "and_expression": _c_and,
    "or_expression": _c_or,
    "not_expression": _c_not,
    "function_expression": _c_function,
}
