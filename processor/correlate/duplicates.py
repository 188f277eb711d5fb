"""Duplicate detection: the same source reporting the same record twice (a log re-read after
lost offsets, a retried shipment, a line written twice). The second sighting is flagged
`duplicate` and exported under its own span id — visible, but never counted as a distinct
request. Memory is bounded: sightings are kept per batch and the oldest batches are forgotten
once `max_records` is exceeded.
"""

from __future__ import annotations

from collections import deque
from hashlib import blake2b

from .. import flags
from ..record import RecordBatch

__all__ = ["Deduplicator"]


class Deduplicator:
    def __init__(self, max_records: int) -> None:
        self._max = max_records
        self._seen: dict[str, set[bytes]] = {}
        self._batches: dict[str, deque[set[bytes]]] = {}
        self._repeats: dict[bytes, int] = {}  # keys seen more than once

    def __call__(self, batch: RecordBatch) -> None:
        # A record is the same as another when its source, trace and span id all are. The key
        # is trace id + span id as one bytes object: bytes cache their hash, so the set
        # operations below hash each key once (a tuple would be re-hashed by every one).
        seen = self._seen.setdefault(batch.source, set())
        batches = self._batches.setdefault(batch.source, deque())
        keys = list(map(bytes.__add__, batch.trace_id, batch.span_id))
        distinct = set(keys)
        if len(distinct) < len(keys) or not seen.isdisjoint(distinct):
            seen_here: set[bytes] = set()
            for i, key in enumerate(keys):
                if key in seen or key in seen_here:
                    # The n-th sighting gets the same id however the records were batched.
                    n = self._repeats.get(key, 1) + 1
                    self._repeats[key] = n
                    batch.add_flag(i, flags.DUPLICATE)
                    batch.span_id[i] = blake2b(
                        b"".join((batch.source.encode(), key, b"dup", str(n).encode())),
                        digest_size=8,
                    ).digest()
                else:
                    seen_here.add(key)
            if len(self._repeats) > self._max:
                self._repeats.clear()
        seen |= distinct
        batches.append(distinct)
        while len(seen) > self._max and len(batches) > 1:
            seen.difference_update(batches.popleft())
