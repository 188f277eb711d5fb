"""systemd journal entries → the log lines the application wrote (pure, no I/O).

Docker's `journald` logging driver (moby daemon/logger/journald) sends each line a container
writes as one journal entry: the text in `MESSAGE`, with `CONTAINER_NAME`, `CONTAINER_ID`,
`CONTAINER_ID_FULL`, `CONTAINER_TAG` (= `SYSLOG_IDENTIFIER`), `IMAGE_NAME`, `PRIORITY` 6 for
stdout and 3 for stderr. A line longer than Docker's 16 KiB buffer is sent as several entries:

* every piece but the last carries `CONTAINER_PARTIAL_MESSAGE=true` (all Docker releases);
* Docker ≥ 20 also writes `CONTAINER_PARTIAL_ID` (the same for every piece of one line),
  `CONTAINER_PARTIAL_ORDINAL` (1, 2, …) and `CONTAINER_PARTIAL_LAST` (`true` on the last one).
  Older releases write no marker at all on the last piece: it is the next entry of the same
  container and stream.

Entries arrive as the collector's `journald` receiver emits them (the body is the map of the
entry's fields, as `journalctl -o json` prints them) or, in replay, as lines of
`journalctl -o json` or as journal export format (`journalctl -o export`: `KEY=value` lines, a
binary value as `KEY`, its 64-bit little-endian length and the bytes; an empty line ends an
entry).
Both spell a field that is not valid UTF-8 text as an array of byte values; it is decoded with
U+FFFD for the invalid bytes, never dropped.

`recombine` turns entries into one `ContainerLine` per logical line, with the guarantees of
audit_guard.sources.container: pieces joined per piece id (else per container and stream); a run
never completed (end of input, a missing ordinal) is emitted `partial=True`, and so is a
line with a piece whose `MESSAGE` is null (journalctl prints a field over 4 KiB as null unless
run with `--all`: the journald receiver needs `all: true`); an entry without `MESSAGE` is kept
as a malformed line; output is ordered by each line's first entry.
Docker before 20 marks no last piece: a run of one container and stream is completed by that
stream's next entry, so a line cut by a container stop is glued to the first line after its
restart (the same blind spot as json-file's, where only `time` tells them apart).

The line's observed time (what audit_guard.checks.lag compares with the app's own time) is
when the runtime handed the line to the journal: `_SOURCE_REALTIME_TIMESTAMP` (journald's
trusted time of the sender's write, from the socket) when the entry has one, else
`__REALTIME_TIMESTAMP` (when journald stored it). A journald that stores an entry late (its own
backlog) is a delay of the pipeline, not an app that held its output back (`delayed`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..grammar import ranges
from .container import ContainerLine

__all__ = [
    "JOURNAL_KEYS",
    "JournalLine",
    "decode_entry",
    "detect_format",
    "entries",
    "is_export",
    "parse_export",
    "sample_entries",
    "message_text",
    "observed_ns",
    "recombine",
]

MESSAGE = "MESSAGE"
REALTIME = "__REALTIME_TIMESTAMP"
CURSOR = "__CURSOR"
SOURCE_REALTIME = "_SOURCE_REALTIME_TIMESTAMP"
PARTIAL_MESSAGE = "CONTAINER_PARTIAL_MESSAGE"
PARTIAL_ID = "CONTAINER_PARTIAL_ID"
PARTIAL_ORDINAL = "CONTAINER_PARTIAL_ORDINAL"
PARTIAL_LAST = "CONTAINER_PARTIAL_LAST"
# Fields every `journalctl -o json` line has (detection of a journal export in replay).
JOURNAL_KEYS = frozenset({REALTIME, CURSOR, "__MONOTONIC_TIMESTAMP"})
# Kept on each line (`ContainerLine.attrs`): what names the container the line came from.
_NAMING_FIELDS = ("CONTAINER_NAME", "CONTAINER_TAG", "CONTAINER_ID", "_SYSTEMD_UNIT")
_STDERR_PRIORITIES = frozenset({"0", "1", "2", "3"})  # Docker: stderr → PriErr (3)
_US = 1000


@dataclass(slots=True)
class JournalLine(ContainerLine):
    # The `__CURSOR` of the line's last entry: its place in the journal. The same entry read
    # again (a collector that stopped before it saved its cursor) has the same one.
    cursor: str | None = None


def message_text(value: object) -> str | None:
    """A journal field's value as text: a string as is, an array of byte values (how
    journalctl writes a value that is not UTF-8) decoded with U+FFFD for bad bytes, a list of
    strings (a field given more than once) joined by newlines; None when there is none."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list):
        # Numbers arrive as floats from a collector that read them as JSON (Go's float64).
        if all(isinstance(b, (int, float)) and b == int(b) and 0 <= b <= 255 for b in value):
            return bytes(map(int, value)).decode("utf-8", "replace")
        return "\n".join(t for t in map(message_text, value) if t is not None)
    return str(value)


def _microseconds_ns(value: object) -> int | None:
    text = message_text(value)
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    ns = int(text) * _US
    return ns if ranges.time_ok(ns) else None


def observed_ns(fields: Mapping[str, Any]) -> int | None:
    """When the runtime handed the entry to journald (see the module doc), in ns."""
    return _microseconds_ns(fields.get(SOURCE_REALTIME)) or _microseconds_ns(fields.get(REALTIME))


def decode_entry(raw: bytes | str) -> dict[str, Any] | None:
    """One `journalctl -o json` line → its fields, None when it is not a journal entry."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if obj.__class__ is not dict or REALTIME not in obj:
        return None
    return obj  # type: ignore[no-any-return]


def detect_format(sample_lines: list[bytes]) -> bool:
    """Are most non-empty sample lines `journalctl -o json` entries, or is the sample journal
    export format?"""
    lines = [raw for raw in sample_lines if raw.strip()]
    hits = sum(1 for raw in lines if raw.lstrip()[:1] == b"{" and decode_entry(raw) is not None)
    return bool(lines) and (hits * 2 > len(lines) or is_export(lines))


_EXPORT_FIELD = re.compile(rb"[A-Z0-9_]{1,64}=")


def is_export(sample_lines: list[bytes]) -> bool:
    """Journal export format: its entries start with `__CURSOR=` (journalctl) or carry
    `__REALTIME_TIMESTAMP=`, and most lines are `KEY=value` (a binary value's bytes are not)."""
    lines = [raw for raw in sample_lines if raw]
    if not lines or not any(raw.startswith((b"__CURSOR=", b"__REALTIME_TIMESTAMP="))
                            for raw in lines):
        return False
    return sum(1 for raw in lines if _EXPORT_FIELD.match(raw)) * 2 > len(lines)


def _add_field(fields: dict[str, Any], key: bytes, value: bytes) -> None:
    name = key.decode("ascii", "replace")
    text = value.decode("utf-8", "replace")
    if name in fields:  # a field given more than once: every value kept
        kept = fields[name]
        fields[name] = [*kept, text] if isinstance(kept, list) else [kept, text]
    else:
        fields[name] = text


def parse_export(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Journal export format → (the entry's first line number, its fields). A binary field cut
    short by the end of the data keeps what is there (the entry is still read)."""
    out: list[tuple[int, dict[str, Any]]] = []
    fields: dict[str, Any] = {}
    pos, line, first = 0, 1, 1
    end = len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        nl = end if nl < 0 else nl
        text = data[pos:nl]
        if not text:  # an empty line ends the entry
            if fields:
                out.append((first, fields))
                fields = {}
            pos, line = nl + 1, line + 1
            first = line
            continue
        eq = text.find(b"=")
        if eq >= 0:
            _add_field(fields, text[:eq], text[eq + 1:])
            pos, line = nl + 1, line + 1
            continue
        size = int.from_bytes(data[nl + 1:nl + 9], "little")  # a binary field
        value = data[nl + 9:nl + 9 + size]
        _add_field(fields, text, value)
        pos = nl + 9 + size + 1
        line += 2 + value.count(b"\n")
    if fields:
        out.append((first, fields))
    return out


def entries(data: bytes) -> list[tuple[int, dict[str, Any] | None]]:
    """A whole `journalctl -o json` or `-o export` output → (line number, fields); a JSON
    line that is not an entry gives None (kept as a malformed line by `recombine`)."""
    head = data[:4096].split(b"\n")
    if is_export(head[:-1] or head):
        return list(parse_export(data))
    return [(n, decode_entry(raw)) for n, raw in enumerate(data.split(b"\n"), 1)
            if raw.strip()]


def sample_entries(lines: list[tuple[int, bytes]]) -> list[tuple[int, dict[str, Any] | None]]:
    """Sampled lines (empty ones left out) → entries: export format's entries are told apart
    again where a field repeats (journalctl starts each with `__CURSOR=`)."""
    if not is_export([raw for _, raw in lines]):
        return [(n, decode_entry(raw)) for n, raw in lines]
    out: list[tuple[int, dict[str, Any] | None]] = []
    current: dict[str, Any] = {}
    first = lines[0][0] if lines else 1
    for n, raw in lines:
        key, eq, value = raw.partition(b"=")
        if not eq or not _EXPORT_FIELD.match(raw):
            continue  # a binary field's bytes: not read from a sample
        if key.decode("ascii", "replace") in current:
            out.append((first, current))
            current, first = {}, n
        _add_field(current, key, value)
    if current:
        out.append((first, current))
    return out


def _stream(fields: Mapping[str, Any]) -> str:
    return "stderr" if message_text(fields.get("PRIORITY")) in _STDERR_PRIORITIES else "stdout"


def _naming(fields: Mapping[str, Any]) -> dict[str, str] | None:
    out = {k: t for k in _NAMING_FIELDS if (t := message_text(fields.get(k))) is not None}
    return out or None


def _ordinal(fields: Mapping[str, Any]) -> int | None:
    text = message_text(fields.get(PARTIAL_ORDINAL))
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 9:
        return None
    return int(text)


class _Run:
    """The pieces of one logical line not yet completed."""

    __slots__ = ("line", "observed", "attrs", "stream", "pieces", "next_ordinal", "gap",
                 "cursor")
    gap: bool

    def __init__(self, line: int, fields: Mapping[str, Any]) -> None:
        self.line = line
        self.observed = observed_ns(fields)  # the first piece's: when the line began to arrive
        self.attrs = _naming(fields)
        self.stream = _stream(fields)
        self.pieces: list[str] = []
        self.next_ordinal: int | None = None
        self.gap = False  # an ordinal is missing: a piece was lost

    def add(self, fields: Mapping[str, Any], text: str) -> None:
        ordinal = _ordinal(fields)
        if ordinal is not None:
            if self.next_ordinal is not None and ordinal != self.next_ordinal:
                self.gap = True
            elif self.next_ordinal is None and ordinal != 1:
                self.gap = True  # the first pieces are missing
            self.next_ordinal = ordinal + 1
        self.pieces.append(text)
        self.cursor = message_text(fields.get(CURSOR))

    def emit(self, partial: bool) -> JournalLine:
        return JournalLine(self.line, "".join(self.pieces), self.stream, self.observed,
                           partial or self.gap, self.attrs, cursor=self.cursor)


def _key(fields: Mapping[str, Any]) -> tuple[str, ...]:
    """The run an entry belongs to: its piece id (Docker ≥ 20), else its container (or unit,
    or process) and stream."""
    piece_id = message_text(fields.get(PARTIAL_ID))
    if piece_id:
        return ("id", piece_id)
    source = next((t for k in ("CONTAINER_ID_FULL", "CONTAINER_ID", "_SYSTEMD_UNIT", "_PID")
                   if (t := message_text(fields.get(k)))), "")
    return ("stream", source, _stream(fields))


def _is_last(fields: Mapping[str, Any]) -> bool:
    """Does this entry end its line? Docker marks every piece but the last."""
    if message_text(fields.get(PARTIAL_MESSAGE)) == "true":
        return False
    return message_text(fields.get(PARTIAL_LAST)) != "false"


def recombine(entries: Iterable[tuple[int, Mapping[str, Any] | None]]) -> list[JournalLine]:
    """Journal entries `(line number or position, fields)` → logical lines (see the module
    doc). `fields` None: a line that was not a journal entry (kept, malformed, empty text)."""
    out: list[JournalLine] = []
    pending: dict[tuple[str, ...], _Run] = {}
    for number, fields in entries:
        if fields is None or MESSAGE not in fields:
            out.append(JournalLine(number, "", "", None, malformed=True) if fields is None else
                       JournalLine(number, "", "", observed_ns(fields), malformed=True,
                                   cursor=message_text(fields.get(CURSOR))))
            continue
        text = message_text(fields[MESSAGE])
        elided = text is None  # journalctl without --all prints a field over 4 KiB as null
        text = text or ""
        key = _key(fields)
        run = pending.get(key)
        last = _is_last(fields)
        if run is None:
            if last and _ordinal(fields) in (None, 1):  # the common case: a whole line
                out.append(JournalLine(number, text, _stream(fields), observed_ns(fields),
                                       elided, _naming(fields),
                                       cursor=message_text(fields.get(CURSOR))))
                continue
            run = pending[key] = _Run(number, fields)
        run.add(fields, text)
        run.gap |= elided
        if last:
            out.append(run.emit(partial=False))
            del pending[key]
    for run in pending.values():
        out.append(run.emit(partial=True))
    out.sort(key=lambda line: line.line)
    return out
