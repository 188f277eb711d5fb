"""The chain stage's memory of the records it chained recently, for re-sends.

A record seen again (a resent request) must be re-emitted with the chain values it had the
first time. Re-sends are rare, so the memory costs the hot path next to nothing: each call's
rows are kept as they came (its trace and span id columns and its hashes, one `Run`), and the
dictionary from trace id + span id to seq is built only when a re-send asks, from the runs not
indexed yet. A run forgotten (rolled back, or the oldest beyond the memory's size) takes its
entries out of the index, so every entry points into a remembered run.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass


@dataclass(slots=True)
class Run:
    """The rows one call chained, seqs `first` … `first + len(hashes) - 1`, in order."""

    first: int
    trace_ids: list[bytes]
    span_ids: list[bytes]
    hashes: list[bytes]


def _first(run: Run) -> int:
    return run.first


class RecentRecords:
    """One chain's recent records (oldest run first; seqs contiguous and increasing)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.size = 0  # records in `runs`
        self._index: dict[bytes, int] = {}  # trace id + span id → seq (the latest chained)
        self._indexed = 0  # runs[:_indexed] are in `_index`

    def add(self, run: Run) -> None:
        self.runs.append(run)
        self.size += len(run.hashes)

    def drop_last(self) -> None:
        """Forget the latest run (its call was rolled back)."""
        run = self.runs.pop()
        self.size -= len(run.hashes)
        if self._indexed > len(self.runs):
            self._indexed -= 1
            self._unindex(run)

    def trim(self, keep: int) -> None:
        """Forget the oldest runs while at least `keep` records are left without them."""
        while self.runs and self.size - len(self.runs[0].hashes) >= keep:
            run = self.runs.pop(0)
            self.size -= len(run.hashes)
            if self._indexed:
                self._indexed -= 1
                self._unindex(run)

    def _unindex(self, run: Run) -> None:
        """Remove a run's entries (those a later run did not take over): only after a re-send
        asked, so a Python loop is fine."""
        last = run.first + len(run.hashes)
        for key in map(bytes.__add__, run.trace_ids, run.span_ids):
            if run.first <= self._index.get(key, -1) < last:
                del self._index[key]

    def find(self, key: bytes) -> tuple[int, bytes] | None:
        """(seq, hash) the record with this trace id + span id was chained with, if still
        remembered."""
        runs = self.runs
        while self._indexed < len(runs):  # index the runs added since the last question
            run = runs[self._indexed]
            self._index.update(zip(map(bytes.__add__, run.trace_ids, run.span_ids),
                                   range(run.first, run.first + len(run.hashes)), strict=True))
            self._indexed += 1
        seq = self._index.get(key)
        if seq is None:
            return None
        run = runs[bisect_right(runs, seq, key=_first) - 1]
        return seq, run.hashes[seq - run.first]
