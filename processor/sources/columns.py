"""Column conversions: a whole column of raw log values → normalized values.

Each has a C-level fast path (`map` over builtins) for the common case — every value well
formed — and falls back to the per-value function when any value is not. Both give the same
result; the per-value functions define it.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from operator import mul
from typing import Any

__all__ = ["ints", "last_int", "last_ints", "seconds_ns", "text", "texts", "to_int", "to_ns"]

_NONE = type(None)
_EMPTY = {"": None, "-": None}  # nginx logs a variable without value as "" or "-"


def text(value: Any) -> str | None:
    if value.__class__ is str:
        return None if value == "" or value == "-" else value
    return None if value is None else str(value)


def texts(col: list[Any]) -> list[str | None]:
    try:
        out = list(map(_EMPTY.get, col, col))
    except TypeError:  # an unhashable value (a JSON object or array)
        return list(map(text, col))
    if set(map(type, out)) <= {str, _NONE}:
        return out
    return list(map(text, col))


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


def ints(col: list[Any], one: Callable[[Any], int | None] = to_int) -> list[int | None]:
    """Integers; `one` converts a value when the fast path (all plain digits) does not apply."""
    if set(map(type, col)) <= {str, int}:
        try:
            return list(map(int, col))
        except ValueError:
            pass
    return list(map(one, col))


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
        except ValueError:
            return None
    return None


def seconds_ns(col: list[Any]) -> list[int | None]:
    if set(map(type, col)) <= {str, int, float}:
        try:
            micros = map(round, map(mul, map(float, col), repeat(1_000_000.0)))
            return list(map(mul, micros, repeat(1000)))
        except ValueError:
            pass
    return list(map(to_ns, col))
