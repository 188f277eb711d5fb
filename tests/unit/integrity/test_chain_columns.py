"""The chain stage's column-at-a-time parts give exactly what the reference encoding gives: the
links (encoding.link over SHA-256 of each content), the attribute bytes (ChainAttributes, run by
run of 128 seqs, across every varint length), and the memory of recent records (a re-send gets
its first values; a rolled-back or forgotten record does not)."""

from __future__ import annotations

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from audit_guard.integrity.chain import ChainStage, _links_py, _with_attributes
from audit_guard.integrity.encoding import ChainAttributes, genesis
from audit_guard.record import RecordBatch
from tests.support.integrity_trail import reference_links


def contents(n: int) -> list[bytes]:
    return [b"span %d " % i + bytes(i % 200) for i in range(n)]


@pytest.mark.parametrize("first", [1, 100, 2**14 - 3, 2**21 - 200, 2**28 - 1, 2**35 + 5])
def test_links_are_the_reference_links(first: int) -> None:
    spans = contents(300)
    prev = genesis("inst/nginx")
    assert _links_py(prev, first, spans) == reference_links(prev, first, spans)
    assert _links_py(prev, first, []) == []


@pytest.mark.parametrize("first", [1, 2, 127, 128, 200, 16_380, 2**21 - 130, 2**28 - 1,
                                   2**35 - 1, 2**49 + 77])
def test_attributes_are_chain_attributes_byte_for_byte(first: int) -> None:
    attrs = ChainAttributes("inst/nginx")
    spans = contents(400)  # runs of 128 cut anywhere, across varint lengths
    hashes = reference_links(genesis("inst/nginx"), first, spans)
    got = _with_attributes(attrs, first, spans, hashes)
    pairs = zip(spans, hashes, strict=True)
    assert got == [s + attrs(seq, h) for seq, (s, h) in enumerate(pairs, first)]


def batch_of(ids: list[int]) -> RecordBatch:
    return RecordBatch("nginx", len(ids), trace_id=[i.to_bytes(16, "big") for i in ids],
                       span_id=[i.to_bytes(8, "big") for i in ids])


def chained(stage: ChainStage, ids: list[int], again: list[int] | None = None) -> list[bytes]:
    spans = [Span(name=f"record {i}").SerializeToString() for i in ids]
    return stage(batch_of(ids), spans, again or [])


def seq_of(span: bytes) -> int:
    attrs = {kv.key: kv.value for kv in Span.FromString(span).attributes}
    return attrs["audit.chain.seq"].int_value


def test_a_resent_record_keeps_its_first_values_among_new_ones() -> None:
    stage = ChainStage(None, instance_id="i")
    first = chained(stage, list(range(10)))
    stage.commit()
    # Rows 0 and 2 are records 3 and 7 again; the rest are new and continue the chain.
    out = chained(stage, [3, 20, 7, 21], again=[0, 2])
    stage.commit()
    assert out[0] == first[3] and out[2] == first[7]
    fresh = ChainStage(None, instance_id="i")
    expected = chained(fresh, list(range(10)) + [20, 21])
    assert [out[1], out[3]] == expected[10:]
    assert stage.heads["i/nginx"].seq == 12


def test_a_rolled_back_record_is_not_remembered_and_its_seqs_are_reused() -> None:
    stage = ChainStage(None, instance_id="i")
    chained(stage, [1, 2])
    stage.commit()
    savepoint = stage.savepoint()
    chained(stage, [3, 4])
    stage.rollback(savepoint)
    other = chained(stage, [5, 6])  # takes seqs 3 and 4
    stage.commit()
    assert [seq_of(s) for s in other] == [3, 4]
    assert stage.heads["i/nginx"].seq == 4
    # Record 3 was never acknowledged: sent again it is a new record (seq 5), not seq 3.
    again = chained(stage, [3], again=[0])
    assert seq_of(again[0]) == 5
    # Record 5 was: sent again, the same bytes.
    assert chained(stage, [5], again=[0]) == other[:1]


def test_a_question_between_a_run_and_its_rollback_leaves_no_stale_answer() -> None:
    stage = ChainStage(None, instance_id="i")
    chained(stage, [1])
    savepoint = stage.savepoint()
    chained(stage, [2])
    chained(stage, [1], again=[0])  # indexes both runs
    stage.rollback(savepoint)
    chained(stage, [9])  # seq 2, where record 2 was
    assert seq_of(chained(stage, [2], again=[0])[0]) == 3  # record 2: a new link


def test_records_beyond_the_memory_get_new_links() -> None:
    stage = ChainStage(None, remember=4, instance_id="i")
    first = chained(stage, [1, 2, 3])
    stage.commit()
    chained(stage, [1], again=[0])  # asked once: the index is built
    chained(stage, [4, 5, 6])
    stage.commit()  # 6 remembered: without run [1, 2, 3] only 3 would be, so it stays
    assert chained(stage, [2], again=[0])[0] == first[1]
    chained(stage, [7, 8])
    stage.commit()  # without run [1, 2, 3], 5 are left: it goes
    assert seq_of(chained(stage, [2], again=[0])[0]) == 9  # forgotten: a new link
    assert seq_of(chained(stage, [5], again=[0])[0]) == 5  # still remembered
