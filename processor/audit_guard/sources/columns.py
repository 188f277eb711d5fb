"""Column conversions: a whole column of raw log values → normalized values.

Each has a C-level fast path (`map` over builtins) for the common case — every value well
formed — and falls back to the per-value function when any value is not. Both give the same
result; the per-value functions define it (tests/test_nginx_parsing.py compares them on
generated columns). Where setup.py built it, `_columns.c` takes the commonest case of `ints`,
`seconds_ns` and `text_column` first, in one pass (tests/unit/sources/test_columns_native.py
compares it with the Python path).

"Every value is a str" is asked of most columns, and answered by one `min()` pass: it only
succeeds when its values are comparable, a str and any other JSON type never are, so a str
result means every value is one (and its least value says at once whether "" or "-" is among
them). That costs a third of a `set(map(type, col))` pass.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from operator import mul
from typing import Any

import orjson

try:  # setup.py builds it: the common case of ints / seconds_ns / text_column in one C pass
    from . import _columns as _native
except ImportError:  # pragma: no cover - a setup without a C compiler
    _native = None  # type: ignore[assignment]

__all__ = [
    "ints", "last_int", "last_ints", "least_str", "seconds_ns", "structured_rows", "text",
    "text_column", "texts", "to_int", "to_ns",
]

_NONE = type(None)
_ROUND = float.__round__
_EMPTY = {"": None, "-": None}  # nginx logs a variable without value as "" or "-"


def text(value: Any) -> str | None:
    """A scalar as text; None for no value, and for a JSON object or array (not a text: and
    str() of a deeply nested one would exhaust the recursion limit)."""
    if value.__class__ is str:
        return None if value == "" or value == "-" else value
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def least_str(col: list[Any]) -> str | None:
    """The least value when every value of `col` is a str, else None (also for no values)."""
    try:
        least = min(col)
    except (TypeError, ValueError):  # values that do not compare (str and another type), none
        return None
    return least if least.__class__ is str else None


def texts(col: list[Any]) -> list[str | None]:
    return text_column(col)[0]


def text_column(col: list[Any]) -> tuple[list[str | None], bool]:
    """`text` over a column, and whether every value was a str (then no row holds a JSON
    object or array: the caller need not look for one)."""
    if _native is not None and col:
        out = _native.texts(col)
        if out is not None:
            return out, True
    least = least_str(col)
    if least is not None:
        # No "" or "-" when the least value sorts after "-" ("" and "-" sort before it).
        return (list(col) if least > "-" else list(map(_EMPTY.get, col, col))), True
    try:
        out = list(map(_EMPTY.get, col, col))
    except TypeError:  # an unhashable value (a JSON object or array)
        return list(map(text, col)), False
    if set(map(type, out)) <= {str, _NONE}:
        return out, False
    return list(map(text, col)), False


def structured_rows(col: list[Any]) -> list[int]:
    """Rows holding a JSON object or array where a scalar belongs (the caller flags them)."""
    kinds = set(map(type, col))
    if dict not in kinds and list not in kinds:
        return []
    return [i for i, v in enumerate(col) if isinstance(v, dict | list)]


def to_int(value: Any) -> int | None:
    if value.__class__ is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    s = text(value) if not isinstance(value, bool | float) else None
    if s is None:
        return None
    try:
        return int(s)
    except ValueError:
        return None


def ints(col: list[Any], one: Callable[[Any], int | None] = to_int,
         few_distinct: bool = False) -> list[int | None]:
    """Integers; `one` converts a value when the fast path (all plain digits) does not apply.
    `few_distinct`: the values repeat (e.g. status codes), so each distinct one is converted
    once."""
    if _native is not None and (one is to_int or one is last_int):
        out = _native.ints(col)
        if out is not None:
            return out  # type: ignore[no-any-return]
    first_str = bool(col) and col[0].__class__ is str
    if first_str:  # before few_distinct: 2x faster than converting each distinct value
        digits = _digit_strings(col)
        if digits is not None:
            return digits
    kinds = {str} if first_str and least_str(col) is not None else set(map(type, col))
    if few_distinct and kinds == {str}:  # one type: no 1 == 1.0 == True clash
        converted = {v: one(v) for v in set(col)}
        return list(map(converted.__getitem__, col))
    if kinds == {int}:  # bare JSON numbers (int(v) is v)
        return list(col)
    if kinds <= {str, int}:
        try:
            return list(map(int, col))
        except ValueError:
            pass
    return list(map(one, col))


def _digit_strings(col: list[str]) -> list[int] | None:
    """int() of every value, when every value is ASCII digits: read as one JSON array, ~3x
    faster than int() a value. None otherwise, and where JSON would not read one as int()
    does (a leading zero, beyond 64 bits): the caller then converts value by value."""
    try:
        joined = ",".join(col)
    except TypeError:  # not every value is a str
        return None
    digits = joined.replace(",", "")
    if not (digits.isascii() and digits.isdigit()):  # also "" (no values, or an empty one)
        return None
    try:
        out = orjson.loads(f"[{joined}]")
    except orjson.JSONDecodeError:  # "00", "1,,2" (an empty value), more than 64 bits
        return None
    # A value with a comma in it would make more numbers than values.
    return out if len(out) == len(col) else None  # type: ignore[no-any-return]


def last_int(value: Any) -> int | None:
    """$upstream_* hold one value per attempt ("10, 20 : 30"); the last one reached the client."""
    if value.__class__ is str and ("," in value or ":" in value):
        value = value.replace(" : ", ",").rsplit(",", 1)[-1].strip()
    return to_int(value)


def last_ints(col: list[Any]) -> list[int | None]:
    return ints(col, last_int)


def to_ns(value: Any) -> int | None:
    """Seconds ("1764165600.123", $msec / $request_time, ms resolution) → ns.

    Via float, rounded to the microsecond: exact for millisecond values (a float64 holds 15+
    significant digits) and far cheaper than decimal parsing.
    """
    if value.__class__ is str or value.__class__ is int or value.__class__ is float:
        try:
            return round(float(value) * 1_000_000) * 1000
        except (ValueError, OverflowError):  # not a number, NaN, infinity
            return None
    return None


def seconds_ns(col: list[Any], few_distinct: bool = False) -> list[int | None]:
    """`to_ns` over a column. `few_distinct`: the values repeat (e.g. $request_time, in ms), so
    each distinct value is converted once."""
    if _native is not None:
        out = _native.seconds_ns(col)
        if out is not None:
            return out  # type: ignore[no-any-return]
    kinds = set(map(type, col))
    if few_distinct and (kinds == {str} or kinds == {float}):  # one type: no 1 == 1.0 clash
        converted = {v: to_ns(v) for v in set(col)}
        return list(map(converted.__getitem__, col))
    # float.__round__ is round() for a float without round()'s method lookup: 2x faster.
    if kinds == {float}:  # bare JSON numbers, as the shipped log format writes $msec
        try:
            return list(map(mul, map(_ROUND, map(mul, col, repeat(1_000_000.0))),
                            repeat(1000)))
        except (ValueError, OverflowError):  # NaN, infinity (not from JSON, but mapped bodies)
            return list(map(to_ns, col))
    if kinds <= {str, int, float}:
        try:
            micros = map(_ROUND, map(mul, map(float, col), repeat(1_000_000.0)))
            return list(map(mul, micros, repeat(1000)))
        except (ValueError, OverflowError):  # not a number, "inf", "1e400"
            pass
    return list(map(to_ns, col))
