"""Duplicate detection: the same source reporting the same record twice (a log re-read after
lost offsets, a line written twice). The second sighting is flagged `duplicate` and exported
under its own span id — visible, but never counted as a distinct request.

A retry is not a duplicate. The collector resends a request it got no answer for, and a crash
between hand-off and acknowledgement resends one that was handed on: processing it again must
give the same spans. So each sighting remembers the chunk it came in (a digest of the chunk's
raw records) and a record is a duplicate only when it was first seen in a different chunk, or
earlier in the same one; the n-th sighting's id is fixed by when that sighting was first made.

State changes are kept in an undo log until `commit` (called once the spans were handed on);
`rollback` undoes them, so a failed hand-off leaves no trace. Memory is bounded: sightings are
kept per chunk and the oldest chunks are forgotten at commit once `max_records` is exceeded.
"""

from __future__ import annotations

from collections import deque
from hashlib import blake2b
from itertools import repeat

from xxhash import xxh3_64_digest

from .. import flags
from ..record import RecordBatch

__all__ = ["Deduplicator"]

# Chunks remembered at most (retries add chunks without new keys).
_MAX_CHUNKS = 10_000


class Deduplicator:
    def __init__(self, max_records: int) -> None:
        self._max = max_records
        self._first: dict[str, dict[bytes, bytes]] = {}  # source → record key → first chunk
        self._chunks: dict[str, deque[tuple[bytes, list[bytes]]]] = {}  # (chunk, new keys)
        # key → the later sightings, as (chunk, occurrence in the chunk), in the order seen.
        self._repeats: dict[bytes, list[tuple[bytes, int]]] = {}
        self._undo: list[tuple[str, object]] = []

    # -- transaction -------------------------------------------------------------------------
    def savepoint(self) -> int:
        return len(self._undo)

    def rollback(self, savepoint: int = 0) -> None:
        """Undo every change made since `savepoint` (0: since the last commit)."""
        while len(self._undo) > savepoint:
            kind, change = self._undo.pop()
            if kind == "keys":
                source, origin, keys = change  # type: ignore[misc]
                first = self._first[source]
                for key in keys:
                    if first.get(key) == origin:
                        del first[key]
                self._chunks[source].pop()
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
                origin, keys = chunks.popleft()
                for key in keys:
                    if first.get(key) == origin:
                        del first[key]
        if len(self._repeats) > self._max:
            self._repeats.clear()

    # -- the check ---------------------------------------------------------------------------
    def __call__(self, batch: RecordBatch, content: bytes) -> bool:
        """Flag the batch's duplicates; `content`: a digest of the chunk's raw records, which
        tells a resent chunk from another one with the same record ids. True when the whole
        chunk was seen before, exactly (a resend: what it reports was counted already)."""
        # A record is the same as another when its source, trace and span id all are. The key
        # is trace id + span id as one bytes object: bytes cache their hash.
        source = batch.source
        first = self._first.setdefault(source, {})
        chunks = self._chunks.setdefault(source, deque())
        keys = list(map(bytes.__add__, batch.trace_id, batch.span_id))
        origin = xxh3_64_digest(b"".join((content, *keys)))
        distinct = set(keys)
        if len(distinct) == len(keys) and first.keys().isdisjoint(distinct):
            first.update(zip(keys, repeat(origin)))  # the usual case: all new
            new = keys
            resent = False
        else:
            resent = first.get(keys[0]) == origin if keys else False
            new = self._check(batch, keys, origin, first)
        chunks.append((origin, new))
        self._undo.append(("keys", (source, origin, new)))
        return resent

    def _check(self, batch: RecordBatch, keys: list[bytes], origin: bytes,
               first: dict[bytes, bytes]) -> list[bytes]:
        new: list[bytes] = []
        here: dict[bytes, int] = {}  # key → sightings so far in this chunk
        for i, key in enumerate(keys):
            seen_in = first.get(key)
            occurrence = here.get(key, 0)
            here[key] = occurrence + 1
            if seen_in is None:
                first[key] = origin
                new.append(key)
                continue
            if seen_in == origin and occurrence == 0:
                continue  # this very chunk again (a retry): the same record, not a duplicate
            sightings = self._repeats.setdefault(key, [])
            sighting = (origin, occurrence)
            try:
                n = sightings.index(sighting) + 2
            except ValueError:
                sightings.append(sighting)
                self._undo.append(("repeat", key))
                n = len(sightings) + 1
            batch.add_flag(i, flags.DUPLICATE)
            batch.span_id[i] = blake2b(
                b"".join((batch.source.encode(), key, b"dup", str(n).encode())),
                digest_size=8,
            ).digest()
        return new
