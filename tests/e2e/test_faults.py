"""The fault matrix's short subset (the full one is `make faults`): the real chain on loopback
(nginx, collector with the shipped config, `audit-guard serve`, a recording OTLP backend in its
own process), ~5,000 requests, four cheap faults. Every row must lose and rewrite nothing.

The measurement itself is checked first, on hand-made backend records: a harness that cannot
see a lost or rewritten record would pass every row.
"""

from __future__ import annotations

import struct
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.faults.harness import format_table, run_rows
from tests.support.faults.measure import (
    Delivered,
    Reference,
    RowResult,
    compare,
    unlogged_requests,
)
from tests.support.faults.scenarios import short_matrix

RATE = 85.0  # 4 rows x 15 s x 85/s ≈ 5,100 requests


def _record_file(path: Path, spans: list[tuple[str, str, tuple[str, ...], str]]) -> None:
    """A backend record file (4-byte length + request) holding these (trace, span, flags,
    source) spans, one request each."""
    with path.open("wb") as out:
        for trace, span, flags, source in spans:
            req = ExportTraceServiceRequest()
            s = req.resource_spans.add().scope_spans.add().spans.add()
            s.trace_id, s.span_id = bytes.fromhex(trace), bytes.fromhex(span)
            kv = s.attributes.add()
            kv.key, kv.value.string_value = "audit.source", source
            kv = s.attributes.add()
            kv.key = "audit.flags"
            for flag in flags:
                kv.value.array_value.values.add().string_value = flag
            data = req.SerializeToString()
            out.write(struct.pack(">I", len(data)) + data)
        out.write(b"\x00\x00\x01")  # a frame cut by a kill: never read


def test_measurement_sees_lost_rewritten_and_duplicate_records(tmp_path: Path) -> None:
    ids = {name: name * 32 for name in "abcdef"}  # 32-hex trace ids
    span = {name: name * 16 for name in "abcdef"}
    _record_file(tmp_path / "records", [
        (ids["a"], span["a"], (), "nginx"),
        (ids["a"], span["a"], (), "nginx"),  # identical re-send: a duplicate, allowed
        (ids["b"], span["b"], (), "nginx"),
        (ids["b"], "0" * 15 + "1", ("duplicate",), "nginx"),  # re-processed differently
        (ids["c"], span["c"], ("duplicate",), "nginx"),  # flagged duplicate, written once
        (ids["d"], span["d"], ("rule:x",), "nginx"),  # replay says no flags
        (ids["e"], span["e"], (), "app"),  # not an nginx span: e is lost
    ])
    delivered = Delivered(tmp_path / "records")
    assert delivered.update() == 6
    written = Counter({ids[n]: 1 for n in "abcdef"})
    reference = Reference(records={ids[n]: (span[n], ()) for n in "abcdef"})
    result = RowResult("check")
    compare(result, written, delivered, reference)
    assert (result.written, result.delivered, result.lost) == (6, 4, 2)  # e, f
    assert (result.rewritten, result.duplicates) == (3, 1)  # b, c, d; a's re-send
    assert not result.ok


def test_only_lines_lost_inside_a_copytruncate_window_are_excused(tmp_path: Path) -> None:
    # The app's log (demo/upstream.py's JSON lines); nginx's access lines hold a, not b, c, d.
    app = tmp_path / "app.log"
    app.write_bytes(b"".join(
        orjson.dumps({"ts": ts, "trace_id": rid * 32, "message": "POST /v1/chat-messages"})
        + b"\n" for rid, ts in (("a", "2026-12-03T12:18:10.000Z"),
                                ("b", "2026-12-03T12:18:17.802Z"),  # while copytruncate ran
                                ("c", "2026-12-03T12:18:16.900Z"),  # line written in it
                                ("d", "2026-12-03T12:18:20.000Z")))  # no rotation then
        + b"not json\n")
    written = Counter({"a" * 32: 1})
    start = datetime(2026, 12, 3, 12, 18, 17, 700_000, tzinfo=UTC).timestamp()
    inside, outside = unlogged_requests([app], written, [(start, start + 0.2)])
    assert [r.split()[0] for r in inside] == ["b" * 32, "c" * 32]
    assert [r.split()[0] for r in outside] == ["d" * 32]
    assert unlogged_requests([app], written, []) == ([], [*inside, *outside])
    row = RowResult("rotate-copytruncate", sent=4, written=1, delivered=1, unlogged=3,
                    unlogged_excused=len(inside))
    assert not row.ok  # d was lost outside any rotation
    row.unlogged_excused = 3
    assert row.ok


@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_short_fault_matrix_loses_and_rewrites_nothing(tmp_path: Path) -> None:
    results = run_rows(short_matrix(), tmp_path, RATE, seed=11, keep=True,
                       quiet_s=40, idle_queues_s=32, max_drain_s=120)
    report = format_table(results) + "\n" + "\n".join(
        f"  {r.name}: {note}" for r in results for note in ([r.error] if r.error else [])
        + r.notes)
    assert sum(r.sent for r in results) >= 4500, report
    for r in results:
        assert r.error is None, report
        # Every answered request is a line nginx wrote (plus the poisoned lines).
        assert r.written >= r.sent, report
        assert r.lost == 0 and r.rewritten == 0, report
    poisoned = next(r for r in results if r.name == "poisoned")
    assert poisoned.written >= poisoned.sent + 4, report  # the poisoned lines are counted
