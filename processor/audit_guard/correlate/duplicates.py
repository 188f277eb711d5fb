"""Duplicate detection: the same source reporting the same record twice (a line written twice,
a file copied back). The second sighting is flagged `duplicate` and exported under its own span
id — visible, but never counted as a distinct request.

A re-read or a retry is not a duplicate. The collector resends a request it got no answer for,
a crash between hand-off and acknowledgement resends one that was handed on, and a collector
killed before it saved its read offsets reads the last lines again, composed into different
requests: processing them again must give the same spans. So each sighting remembers where it
came from, and a record is a duplicate only when it was first seen somewhere else:

- where the collector says (file_log's `include_file_record_offset`): the record's offset in
  its file. The same line read again sits at the same offset; a line written twice does not.
- otherwise (replay, other senders): the chunk it came in (a digest of the chunk's raw records)
  and its occurrence in the chunk.

The n-th sighting's span id is fixed by when that sighting was first made.

State changes are kept in an undo log until `commit` (called once the spans were handed on);
`rollback` undoes them, so a failed hand-off leaves no trace. Memory is bounded: sightings are
kept per chunk and the oldest chunks are forgotten at commit once `max_records` is exceeded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from itertools import repeat
from typing import Any

from xxhash import xxh3_64_digest

from .. import flags
from ..record import RecordBatch

__all__ = ["Deduplicator", "Origin", "content_digest"]

# Chunks remembered at most (retries add chunks without new keys).
_MAX_CHUNKS = 10_000

# Where a record was first seen: its file offset (int) or its chunk's digest (bytes).
Sighting = int | bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a chunk's records came from: what tells a record seen again (a retry, a re-read)
    from a new one (see Deduplicator)."""

    content: bytes  # a digest of the chunk's raw records
    offsets: list[int | None] | None  # the records' offsets in their files, when known


def content_digest(raw: list[Any]) -> bytes:
    """A digest of raw records (str, bytes or None), to tell a resent chunk from another one
    whose records carry the same ids. xxh3: ~0.04 µs a record (blake2b: ~0.5)."""
    try:
        blob = "\n".join(raw).encode("utf-8", "surrogatepass")
    except TypeError:  # bytes bodies, or rows without raw text
        blob = b"\n".join(r if isinstance(r, bytes) else str(r).encode("utf-8", "surrogatepass")
                          for r in raw)
    return xxh3_64_digest(blob)


class Deduplicator:
    def __init__(self, max_records: int) -> None:
        self._max = max_records
        self._first: dict[str, dict[bytes, Sighting]] = {}  # source → record key → first seen
        # Per source, per chunk: the keys it saw first, and where.
        self._chunks: dict[str, deque[tuple[list[bytes], list[Sighting]]]] = {}
        # key → the later sightings, as (where, occurrence in the chunk), in the order seen.
        self._repeats: dict[bytes, list[tuple[Sighting, int]]] = {}
        self._undo: list[tuple[str, object]] = []

    # -- transaction -------------------------------------------------------------------------
    def savepoint(self) -> int:
        return len(self._undo)

    def rollback(self, savepoint: int = 0) -> None:
        """Undo every change made since `savepoint` (0: since the last commit)."""
        while len(self._undo) > savepoint:
            kind, change = self._undo.pop()
            if kind == "keys":
                source = change  # type: ignore[assignment]
                keys, where = self._chunks[source].pop()  # type: ignore[index]
                _forget(self._first[source], keys, where)  # type: ignore[index]
            else:
                key = change  # type: ignore[assignment]
                sightings = self._repeats[key]  # type: ignore[index]
                sightings.pop()
                if not sightings:
                    del self._repeats[key]  # type: ignore[arg-type]

    def commit(self) -> None:
        """Keep the changes; forget the oldest chunks beyond max_records."""
        self._undo.clear()
        for source, first in self._first.items():
            chunks = self._chunks[source]
            while (len(first) > self._max or len(chunks) > _MAX_CHUNKS) and len(chunks) > 1:
                _forget(first, *chunks.popleft())
        if len(self._repeats) > self._max:
            self._repeats.clear()

    # -- the check ---------------------------------------------------------------------------
    def __call__(self, batch: RecordBatch, content: bytes,
                 offsets: Sequence[int | None] | None = None) -> list[int]:
        """Flag the batch's duplicates. `content`: a digest of the chunk's raw records, which
        tells a resent chunk from another one with the same record ids; `offsets`: the records'
        offsets in their files, where the collector gave them. Returns the rows that are the
        same records seen again (re-read or resent: what they report was counted already)."""
        # A record is the same as another when its source, trace and span id all are. The key
        # is trace id + span id as one bytes object: bytes cache their hash.
        source = batch.source
        first = self._first.setdefault(source, {})
        keys = list(map(bytes.__add__, batch.trace_id, batch.span_id))
        origin = xxh3_64_digest(b"".join((content, *keys)))
        if offsets is None or None in offsets:
            where: list[Sighting] = [origin if o is None else o
                                     for o in (offsets or repeat(None, len(keys)))]
        else:
            where = list(offsets)
        distinct = set(keys)
        again: list[int] = []
        if len(distinct) == len(keys) and first.keys().isdisjoint(distinct):
            first.update(zip(keys, where, strict=True))  # the usual case: all new
            new, new_where = keys, where
        else:
            new, new_where = self._check(batch, keys, where, first, again)
        self._chunks.setdefault(source, deque()).append((new, new_where))
        self._undo.append(("keys", source))
        return again

    def _check(self, batch: RecordBatch, keys: list[bytes], where: list[Sighting],
               first: dict[bytes, Sighting], again: list[int]
               ) -> tuple[list[bytes], list[Sighting]]:
        new: list[bytes] = []
        new_where: list[Sighting] = []
        here: dict[bytes, int] = {}  # key → sightings so far in this chunk
        for i, (key, at) in enumerate(zip(keys, where, strict=True)):
            seen_at = first.get(key)
            occurrence = here.get(key, 0) if isinstance(at, bytes) else 0
            here[key] = occurrence + 1
            if seen_at is None:
                first[key] = at
                new.append(key)
                new_where.append(at)
                continue
            if seen_at == at and occurrence == 0:
                again.append(i)  # the same record again (a re-read, a retry): not a duplicate
                continue
            sightings = self._repeats.setdefault(key, [])
            sighting = (at, occurrence)
            try:
                n = sightings.index(sighting) + 2
                again.append(i)  # this duplicate was seen before, from the same place
            except ValueError:
                sightings.append(sighting)
                self._undo.append(("repeat", key))
                n = len(sightings) + 1
            batch.add_flag(i, flags.DUPLICATE)
            batch.span_id[i] = blake2b(
                b"".join((batch.source.encode(), key, b"dup", str(n).encode())),
                digest_size=8,
            ).digest()
        return new, new_where


def _forget(first: dict[bytes, Sighting], keys: list[bytes], where: list[Sighting]) -> None:
    """Forget a chunk's keys, each only while it still stands for this chunk's sighting. A
    chunk's keys are distinct (only new ones are kept), so when every key still does (the usual
    case), all go in one C-level pass (~0.3 µs a record less than the loop)."""
    if list(map(first.get, keys)) == where:
        deque(map(first.__delitem__, keys), maxlen=0)
        return
    for key, at in zip(keys, where, strict=True):
        if first.get(key) == at:
            del first[key]
