"""The node compilers of audit_guard.grammar.jmes: each JMESPath AST node → a plain-Python
closure that returns what the jmespath library returns for it, or raises what it raises.

Nodes without a compiler here are handed, subtree by subtree, to the library's own
TreeInterpreter (see the contract in audit_guard.grammar.jmes).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from numbers import Number
from typing import Any

from jmespath import functions as jp_functions
from jmespath.visitor import TreeInterpreter

__all__ = ["NATIVE_FUNCTIONS", "NATIVE_NODE_TYPES", "Evaluator", "compile_node", "is_truthy"]

Evaluator = Callable[[Any], Any]

# One interpreter for every fallback subtree: ParsedResult.search would build one per call.
# It holds no per-search state (only a method cache), so sharing it across threads is safe.
_INTERPRETER = TreeInterpreter()
_FUNCTIONS = jp_functions.Functions()

NATIVE_NODE_TYPES = frozenset({
    "field", "subexpression", "pipe", "index_expression", "index", "current", "identity",
    "literal", "comparator", "and_expression", "or_expression", "not_expression",
    "function_expression",
})
NATIVE_FUNCTIONS = frozenset(
    {"starts_with", "ends_with", "contains", "length", "to_string", "to_number"}
)


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


def compile_node(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    """`node` as a closure; the types of the subtrees left to the library go into `fallback`."""
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
    fns = [compile_node(c, fallback) for c in children]
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
    left = compile_node(left_node, fallback)
    right = compile_node(right_node, fallback)
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
    left, right = (compile_node(c, fallback) for c in node["children"])

    def and_(v: Any) -> Any:
        x = left(v)
        return x if _is_false(x) else right(v)

    return and_


def _c_or(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    left, right = (compile_node(c, fallback) for c in node["children"])

    def or_(v: Any) -> Any:
        x = left(v)
        return right(v) if _is_false(x) else x

    return or_


def _c_not(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    (child,) = (compile_node(c, fallback) for c in node["children"])

    def not_(v: Any) -> Any:
        x = child(v)
        if _is_actual_number(x) and x == 0:  # the library's special case: !0 is false
            return False
        return not x  # Python truthiness, as in the library

    return not_


def _c_function(node: dict[str, Any], fallback: set[str]) -> Evaluator:
    name = node["value"]
    args = [compile_node(c, fallback) for c in node["children"]]
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
