"""The chain stage's delivery rules: a retried Export gets the same chain values, a record seen
again keeps its first values, a restart continues from the persisted head, and a head file that
cannot be written fails the Export (nothing acknowledged)."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.correlate.state import StateWriteError
from audit_guard.integrity.chain import HEAD_FILE, ChainStage
from tests.support.integrity_trail import Trail, access_line, logs_request


def chain_values(request: bytes) -> list[tuple[str, int, str]]:
    out = []
    for rs in ExportTraceServiceRequest.FromString(request).resource_spans:
        for span in rs.scope_spans[0].spans:
            a = {kv.key: kv.value for kv in span.attributes}
            out.append((a["audit.chain.id"].string_value, a["audit.chain.seq"].int_value,
                        a["audit.chain.hash"].string_value))
    return out


def test_seqs_and_one_chain_per_source(tmp_path: Path) -> None:
    trail = Trail(tmp_path)
    values = chain_values(trail.export([access_line(i) for i in range(5)]))
    assert [(c, s) for c, s, _ in values] == [("inst1/nginx", i) for i in range(1, 6)]
    assert len({h for _, _, h in values}) == 5
    values = chain_values(trail.export([access_line(i) for i in range(5, 8)], 10_000))
    assert [s for _, s, _ in values] == [6, 7, 8]


def test_a_retried_export_gets_identical_chain_values(tmp_path: Path) -> None:
    trail = Trail(tmp_path)
    p = trail.pipeline
    request = logs_request([access_line(i) for i in range(4)])
    savepoint = p.begin()
    first, _ = p.process_logs(request, now_ns=42)
    p.rollback(savepoint)  # downstream failed: nothing committed
    savepoint = p.begin()
    second, _ = p.process_logs(request, now_ns=42)
    p.commit()
    assert first == second
    # Resent after the commit (the acknowledgement was lost): the same records, same values.
    third, _ = p.process_logs(request, now_ns=43)
    assert chain_values(third) == chain_values(first)


def test_a_restart_continues_from_the_persisted_head(tmp_path: Path) -> None:
    trail = Trail(tmp_path)
    trail.export([access_line(i) for i in range(3)])
    head = trail.pipeline.chain.heads["inst1/nginx"]
    restarted = ChainStage(tmp_path)  # instance id comes from the head file
    assert restarted.instance_id == "inst1"
    assert restarted.heads["inst1/nginx"] == head
    # The same records the uninterrupted instance would have chained next.
    again = Trail(tmp_path)
    values = chain_values(again.export([access_line(i) for i in range(3, 5)], 5_000))
    assert [s for _, s, _ in values] == [4, 5]


def test_an_unwritable_head_file_fails_the_export_and_undoes_it(tmp_path: Path) -> None:
    trail = Trail(tmp_path)
    p = trail.pipeline
    request = logs_request([access_line(0)])
    blocker = (tmp_path / HEAD_FILE).with_suffix(".tmp")
    blocker.mkdir()  # the head file's temporary name taken: the write fails (even as root)
    savepoint = p.begin()
    first, _ = p.process_logs(request, now_ns=42)
    with pytest.raises(StateWriteError, match=HEAD_FILE):
        p.commit()
    p.rollback(savepoint)
    assert "inst1/nginx" not in p.chain.heads
    blocker.rmdir()
    savepoint = p.begin()
    second, _ = p.process_logs(request, now_ns=42)
    p.commit()
    assert chain_values(second) == chain_values(first)
    assert p.chain.heads["inst1/nginx"].seq == 1
