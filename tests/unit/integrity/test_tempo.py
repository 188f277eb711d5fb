"""`verify --tempo`: a trail made by the real pipeline, served by the Tempo test double
(tests/support/tempo_double.py: Tempo's documented search and trace-by-id answers, base64 ids,
enum names) — intact when intact, a deleted record named, the search paged by halving the time
range when a page comes back full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_guard.cli import main
from audit_guard.integrity import tempo
from audit_guard.integrity.keys import load_public_keys
from audit_guard.integrity.readers import ReaderError
from audit_guard.integrity.tempo import read_tempo
from audit_guard.integrity.verify import verify
from tests.support.integrity_trail import BASE_MSEC, Trail, access_line, chained, edit_spans
from tests.support.tempo_double import TempoDouble

SINCE, UNTIL = str(int(BASE_MSEC) - 60), str(int(BASE_MSEC) + 600)


@pytest.fixture
def trail_file(tmp_path: Path) -> tuple[Path, Path]:
    """Three Exports of 10 records (one a second) and a digest after the second and third."""
    trail = Trail(tmp_path / "state")
    for n in range(3):
        trail.export([access_line(10 * n + i) for i in range(10)], 100_000 * n)
        if n >= 1:
            trail.digest(now_ns=int(BASE_MSEC * 1e9) + n)
    return trail.write(tmp_path / "spans.json"), tmp_path / "state" / "keys"


def run_verify(url: str, keys: Path, capsys: pytest.CaptureFixture[str]
               ) -> tuple[int, dict[str, Any]]:
    code = main(["verify", "--tempo", url, "--since", SINCE, "--until", UNTIL,
                 "--public-key", str(keys)])
    return code, orjson.loads(capsys.readouterr().out)


def test_an_intact_trail_verifies_intact_from_tempo(
        trail_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, keys = trail_file
    with TempoDouble(path) as double:
        code, report = run_verify(double.url, keys, capsys)
    assert code == 0, report
    assert report["intact"] and report["records"] == 30 and report["digests"] == 2
    assert report["chains"]["inst1/nginx"] == {"first_seq": 1, "last_seq": 30, "records": 30}
    # Every service Tempo knows was searched; its ids are base64 on the wire.
    assert {q["tags"] for q in double.searches} == {"service.name=nginx",
                                                    "service.name=audit-guard"}
    served = next(iter(double.traces.values())).batches[0]["scopeSpans"][0]["spans"][0]
    assert served["spanId"].endswith("=") and served["kind"] == "SPAN_KIND_SERVER"
    assert all(q["tags"] in ("service.name=nginx", "service.name=audit-guard")
               for q in double.searches)


def test_a_deleted_record_is_reported_from_tempo(
        trail_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, keys = trail_file
    edit_spans(path, lambda spans: chained(spans)[11].__setitem__("_drop", True))  # seq 12
    with TempoDouble(path) as double:
        code, report = run_verify(double.url, keys, capsys)
    assert code == 1
    assert [(p["kind"], p["chain"], p["seq"]) for p in report["problems"]] == [
        ("record_deleted", "inst1/nginx", 12)]


def test_a_full_page_splits_the_time_range(trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file
    with TempoDouble(path) as double:
        spans = list(read_tempo(double.url, ["nginx", "audit-guard"], float(SINCE),
                                float(UNTIL), page=4))
    report = verify(spans, load_public_keys([keys]))
    assert report.intact and report.records == 30, report.as_dict()
    assert len(double.searches) > 10  # 30 one-second traces, 4 a page
    assert all(int(q["limit"]) == 4 for q in double.searches)
    assert all(s.where.startswith("tempo trace ") and len(s.trace_id) == 32 for s in spans)


def test_a_second_too_full_to_page_is_an_input_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = Trail(tmp_path / "state")
    trail.export([access_line(i, msec=f"{BASE_MSEC:.3f}") for i in range(6)])  # one second
    path = trail.write(tmp_path / "spans.json")
    monkeypatch.setattr(tempo, "MAX_LIMIT", 4)
    with TempoDouble(path) as double, pytest.raises(ReaderError, match="cannot page further"):
        list(read_tempo(double.url, ["nginx"], float(SINCE), float(UNTIL), page=2))
    assert [int(q["limit"]) for q in double.searches][-2:] == [2, 4]


def test_a_late_record_before_the_range_is_looked_up_not_deleted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Seq 5's event happened an hour before the others (it reached the processor late): a
    # range that starts after it misses it in the search, and the TraceQL look-up finds it.
    trail = Trail(tmp_path / "state")
    trail.export([access_line(i, msec=f"{BASE_MSEC - 3600:.3f}") if i == 4 else access_line(i)
                  for i in range(10)])
    trail.digest(now_ns=int(BASE_MSEC * 1e9))
    path, keys = trail.write(tmp_path / "spans.json"), tmp_path / "state" / "keys"
    with TempoDouble(path) as double:
        code, report = run_verify(double.url, keys, capsys)
        lookups = [q for q in double.searches if "q" in q]
    assert code == 0 and report["records"] == 10, report
    assert lookups == [{"q": '{ span.audit.chain.id = "inst1/nginx" && span.audit.chain.seq = 5 }',
                        "start": str(int(SINCE) - 86_400), "end": str(int(SINCE) + 1),
                        "limit": "20"}]
    with TempoDouble(path) as double:  # without the look-up: the same record reads deleted
        spans = read_tempo(double.url, None, float(SINCE), float(UNTIL))
        report_without = verify(spans, load_public_keys([keys]))
    assert [(p.kind, p.seq) for p in report_without.problems] == [("record_deleted", 5)]


def test_a_trace_tempo_returns_in_part_is_an_input_error(
        trail_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, keys = trail_file
    with TempoDouble(path, partial=True) as double:
        code = main(["verify", "--tempo", double.url, "--since", SINCE, "--until", UNTIL,
                     "--public-key", str(keys)])
    assert code == 2
    assert "in part (trace exceeds max size)" in capsys.readouterr().err
