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
        self._seen: set[bytes] = set()
        self._batches: deque[list[bytes]] = deque()
        self._repeats: dict[bytes, int] = {}  # sightings of keys seen more than once

    def __call__(self, batch: RecordBatch) -> None:
        # A record is the same as another when its source, trace and span id all are.
        prefix = batch.source.encode() + b"\x00"
        keys = list(map(bytes.__add__, map(prefix.__add__, batch.trace_id), batch.span_id))
        if not self._seen.isdisjoint(keys) or len(set(keys)) < len(keys):
            seen_here: set[bytes] = set()
            for i, key in enumerate(keys):
                if key in self._seen or key in seen_here:
                    # The n-th sighting gets the same id however the records were batched.
                    n = self._repeats.get(key, 1) + 1
                    self._repeats[key] = n
                    batch.add_flag(i, flags.DUPLICATE)
                    batch.span_id[i] = blake2b(key + b"dup" + str(n).encode(), digest_size=8
                                               ).digest()
                else:
                    seen_here.add(key)
            if len(self._repeats) > self._max:
                self._repeats.clear()
        self._seen.update(keys)
        self._batches.append(keys)
        while len(self._seen) > self._max and len(self._batches) > 1:
            self._seen.difference_update(self._batches.popleft())
