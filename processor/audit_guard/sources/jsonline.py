"""Decoding one JSON log line, salvaging what a cut line still holds.

A line cut mid-write (a full disk, a killed writer, a size cap) is still evidence: every
complete `"key": value` pair before the cut is recovered, and the caller flags the record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from .. import flags

if TYPE_CHECKING:
    from ..record import RecordBatch

__all__ = ["DecodeResult", "decode_json_object", "mark_decoding"]

_STRING = r'"(?:[^"\\]|\\.)*"'
_OTHER = r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null"
# One complete top-level member, anchored where the previous one ended. A string is complete
# at its closing quote; a number (or literal) only when "," or "}" follows it — at the very end
# of a cut line it may itself be cut ("status": 20 of 200).
_MEMBER = re.compile(
    rf'\s*({_STRING})\s*:\s*(?:({_STRING})\s*(,|\}})?|({_OTHER})\s*(,|\}}))', re.S
)


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
        token = m.group(2) if m.group(2) is not None else m.group(4)
        try:
            obj[key] = orjson.loads(token)
        except orjson.JSONDecodeError:
            # Not valid JSON but still a scalar token, e.g. nginx printing `"status":000`
            # (%03d) for a request that never got a status: keep its text, go on.
            obj[key] = token
        pos = m.end()
        if (m.group(3) or m.group(5)) != ",":
            break
    # A line that still closes with "}" was not cut: it is broken JSON (a writer bug, a
    # format without escape=json). Only an unterminated object is a cut.
    cut = not text.endswith("}")
    return DecodeResult(obj, cut=cut, malformed=not cut)


def mark_decoding(batch: RecordBatch, cut: Iterable[int], malformed: Iterable[int]) -> None:
    """Record what decoding found on the batch's rows: a cut line gets the truncation reason
    json_cut (a reason, not a flag: the pipeline's truncation stage turns reasons into flags),
    a line that is no JSON object the flag malformed."""
    for i in cut:
        batch.truncation_reasons.setdefault(i, []).append(flags.JSON_CUT)
    for i in malformed:
        batch.add_flag(i, flags.MALFORMED)
