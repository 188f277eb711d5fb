"""The duplicate check's window (audit_guard.correlate.duplicates): at commit, the oldest chunks
beyond max_records are forgotten — their records are new again when they come back — while the
records of the chunks kept are still duplicates; a rolled-back chunk leaves nothing behind."""

from __future__ import annotations

from audit_guard import flags
from audit_guard.correlate.duplicates import Deduplicator
from audit_guard.record import RecordBatch


def chunk(*ids: int) -> RecordBatch:
    return RecordBatch("nginx", len(ids), trace_id=[i.to_bytes(16, "big") for i in ids],
                       span_id=[i.to_bytes(8, "big") for i in ids])


def duplicates(dedup: Deduplicator, ids: tuple[int, ...], offset: int) -> list[int]:
    """Flag a chunk of `ids` read at file offsets offset, offset + 1, ...; commit; the ids
    flagged duplicate."""
    batch = chunk(*ids)
    dedup(batch, b"content", [offset + j for j in range(len(ids))])
    dedup.commit()
    return [ids[i] for i, found in batch.flags.items() if flags.DUPLICATE in found]


def test_the_oldest_chunks_are_forgotten_beyond_the_window() -> None:
    dedup = Deduplicator(max_records=4)
    assert duplicates(dedup, (1, 2), 0) == []
    assert duplicates(dedup, (3, 4), 10) == []
    assert duplicates(dedup, (5, 6), 20) == []  # 6 kept > 4: chunk (1, 2) is forgotten
    # 1, 2 new again; 3 still known (seen elsewhere: a duplicate); then chunk (3, 4) goes
    assert duplicates(dedup, (1, 2, 3), 30) == [3]
    assert duplicates(dedup, (5,), 40) == [5]  # kept: 5, 6, 1, 2
    assert duplicates(dedup, (3, 6), 50) == [6]


def test_a_rolled_back_chunk_leaves_no_sighting() -> None:
    dedup = Deduplicator(max_records=100)
    assert duplicates(dedup, (1, 2), 0) == []
    batch = chunk(3, 4)
    dedup(batch, b"content", [10, 11])
    dedup.rollback()
    assert duplicates(dedup, (3, 4), 20) == []  # elsewhere, but the first sighting was undone
    assert duplicates(dedup, (1, 4), 30) == [1, 4]
