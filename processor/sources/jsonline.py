"""Decoding one JSON log line, salvaging what a cut line still holds.

A line cut mid-write (a full disk, a killed writer, a size cap) is still evidence: every
complete `"key": value` pair before the cut is recovered, and the caller flags the record.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["DecodeResult", "decode_json_object"]

_STRING = r'"(?:[^"\\]|\\.)*"'
_SCALAR = rf"{_STRING}|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null"
# One complete top-level member, anchored where the previous one ended.
_MEMBER = re.compile(rf'\s*({_STRING})\s*:\s*({_SCALAR})\s*(,|\}})?', re.S)


class DecodeResult:
    """`obj` is the decoded (or salvaged) object; `cut` and `malformed` say what went wrong."""

    __slots__ = ("obj", "cut", "malformed")

    def __init__(self, obj: dict[str, Any], cut: bool = False, malformed: bool = False) -> None:
        self.obj = obj
        self.cut = cut
        self.malformed = malformed


def decode_json_object(line: bytes | str) -> DecodeResult:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _salvage(line)
    if isinstance(obj, dict):
        return DecodeResult(obj)
    return DecodeResult({}, malformed=True)


def _salvage(line: bytes | str) -> DecodeResult:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text.startswith("{"):
        return DecodeResult({}, malformed=True)
    obj: dict[str, Any] = {}
    pos = 1
    while True:
        m = _MEMBER.match(text, pos)
        if m is None:
            break
        try:
            key = orjson.loads(m.group(1))
        except orjson.JSONDecodeError:
            break
        try:
            obj[key] = orjson.loads(m.group(2))
        except orjson.JSONDecodeError:
            # Not valid JSON but still a scalar token, e.g. nginx printing `"status":000`
            # (%03d) for a request that never got a status: keep its text, go on.
            obj[key] = m.group(2)
        pos = m.end()
        if m.group(3) != ",":
            break
    # A line that still closes with "}" was not cut: it is broken JSON (a writer bug, a
    # format without escape=json). Only an unterminated object is a cut.
    cut = not text.endswith("}")
    return DecodeResult(obj, cut=cut, malformed=not cut)
