"""The ranges a parsed value must fall in: one rule per kind of value, shared by every source.

A value outside its range cannot be exported faithfully (an OTLP time or int64 attribute cannot
hold it, the reconcile journal packs a status in 16 bits) and is not something a real program
writes, so a source treats it like an unparseable value: the field becomes absent (None) and
its name goes into the record's `unparsed`, which the validator turns into
`invalid_field:<name>` on that record alone. The rest of the batch is untouched.

The ranges:
- times (event and observed): 1970-01-01 .. 2262-04-11 — ns since the epoch in a signed 64-bit
  integer, the range of OTLP times and of the reconcile journal; negative is not a log time;
- HTTP status: 0 .. 999 — what nginx prints with %03d, including 000 (no status was set) and
  009 (HTTP/0.9); whether it is a *valid* HTTP status (100..599) is the validator's business;
- sizes and byte counts: 0 .. 2**63-1 (an OTLP int64 attribute);
- durations: 0 .. 30 days. Long-lived SSE or WebSocket connections last hours, sometimes days;
  a month bounds them generously and still catches garbage (and keeps `end - duration` a time);
- ids (request id, trace id, traceparent): at most MAX_ID_CHARS characters, printable.

Each numeric range has a per-value check and bounds for `check_column`, which costs one C-level
min/max pass when every value is in range (the usual case).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DURATIONS",
    "MAX_DURATION_NS",
    "MAX_ID_CHARS",
    "MAX_INT64",
    "MAX_STATUS",
    "MAX_TIME_NS",
    "SIZES",
    "STATUSES",
    "TIMES",
    "all_within",
    "check_column",
    "check_ids",
    "note_unparseable",
    "duration_ok",
    "id_ok",
    "size_ok",
    "status_ok",
    "time_ok",
]

MAX_INT64 = 2**63 - 1
MAX_TIME_NS = MAX_INT64  # 2262-04-11T23:47:16.854775807Z
MAX_STATUS = 999
MAX_DURATION_NS = 30 * 86_400 * 1_000_000_000
MAX_ID_CHARS = 256


TIMES = (0, MAX_TIME_NS)
STATUSES = (0, MAX_STATUS)
SIZES = (0, MAX_INT64)
DURATIONS = (0, MAX_DURATION_NS)


def time_ok(ns: int) -> bool:
    return 0 <= ns <= MAX_TIME_NS


def status_ok(code: int) -> bool:
    return 0 <= code <= MAX_STATUS


def size_ok(size: int) -> bool:
    return 0 <= size <= MAX_INT64


def duration_ok(ns: int) -> bool:
    return 0 <= ns <= MAX_DURATION_NS


def id_ok(value: str) -> bool:
    return len(value) <= MAX_ID_CHARS and value.isprintable()


def all_within(column: list[Any], bounds: tuple[int, int]) -> bool:
    """Whether every value is there (no None) and within `bounds` (inclusive): the usual case,
    answered by one C-level min and one max pass (a None makes them raise), so that a caller
    can skip its None scans, `note_unparseable` and `check_column` altogether."""
    lo, hi = bounds
    try:
        return bool(column) and lo <= min(column) and max(column) <= hi
    except TypeError:  # a None (an absent value) among them
        return False


def check_column(
    name: str,
    column: list[Any],
    bounds: tuple[int, int],
    unparsed: dict[int, list[str]],
    absent: Any = None,
) -> list[Any]:
    """`column` with every value outside `bounds` (inclusive) replaced by `absent`, its row
    noted in `unparsed` under `name`. None values are left alone (the field is simply not
    there). Returns the same list object when every value is in range: then the cost is one
    C-level min/max pass."""
    lo, hi = bounds
    try:  # the usual case, every value there: no None pass first
        if not column or (lo <= min(column) and max(column) <= hi):
            return column
    except TypeError:  # a None (an absent value) among them
        present = [v for v in column if v is not None]
        if not present or (lo <= min(present) and max(present) <= hi):
            return column
    out = list(column)
    for i, value in enumerate(column):
        if value is not None and not lo <= value <= hi:
            out[i] = absent
            names = unparsed.setdefault(i, [])
            if name not in names:
                names.append(name)
    return out


def note_unparseable(
    name: str, values: list[Any], raw: list[Any], unparsed: dict[int, list[str]]
) -> None:
    """Rows where a value was written (`raw` not None, "" or "-": nginx's spellings of no
    value) but did not convert (`values` None)."""
    if None not in values:
        return
    for i, (value, written) in enumerate(zip(values, raw, strict=True)):
        if value is None and written is not None and not (written.__class__ is str
                                                          and written in ("", "-")):
            names = unparsed.setdefault(i, [])
            if name not in names:
                names.append(name)


# ASCII control characters: what str.isprintable rejects in ASCII text.
_ASCII_CONTROLS = bytes(range(32)) + b"\x7f"


def _all_printable(values: list[str]) -> bool:
    """all(map(str.isprintable, values)), 3x faster for ASCII (the usual case: hex ids): the
    joined text's bytes with the control characters deleted are as long as before."""
    joined = "".join(values)
    if joined.isascii():
        raw = joined.encode()
        # Letters and digits only (hex ids): printable, and bytes.isalnum is 2.5x faster still.
        return raw.isalnum() or len(raw.translate(None, _ASCII_CONTROLS)) == len(raw)
    return all(map(str.isprintable, values))


def check_ids(name: str, column: list[str | None], unparsed: dict[int, list[str]]
              ) -> list[str | None]:
    """`column` with every id that fails `id_ok` replaced by None, its row noted under `name`.
    Returns the same list object when every id is fine (two C-level passes)."""
    try:  # every id there (the usual case): no None pass first
        if not column or (max(map(len, column)) <= MAX_ID_CHARS  # type: ignore[arg-type]
                          and _all_printable(column)):  # type: ignore[arg-type]
            return column
    except TypeError:  # a None (an absent id) among them
        present = [v for v in column if v is not None]
        if not present or (max(map(len, present)) <= MAX_ID_CHARS and _all_printable(present)):
            return column
    out = list(column)
    for i, value in enumerate(column):
        if value is not None and not id_ok(value):
            out[i] = None
            names = unparsed.setdefault(i, [])
            if name not in names:
                names.append(name)
    return out
