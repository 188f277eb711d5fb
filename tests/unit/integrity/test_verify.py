"""`verify` over OTLP JSON files made by the real pipeline: intact, then each kind of tampering
reported as such and naming the record (chain, seq, where it was read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_guard.cli import main
from audit_guard.integrity.keys import SigningKey, load_public_keys
from audit_guard.integrity.readers import read_otlp_json
from audit_guard.integrity.report import Report
from audit_guard.integrity.verify import verify
from tests.support.integrity_trail import (
    Trail,
    access_line,
    attr,
    chained,
    edit_spans,
    set_attr,
)


@pytest.fixture
def trail_file(tmp_path: Path) -> tuple[Path, Path]:
    """Three Exports of 10 records and a digest after the first two and at the end."""
    trail = Trail(tmp_path / "state")
    offset = 0
    for n in range(3):
        trail.export([access_line(10 * n + i) for i in range(10)], offset)
        offset += 100_000
        if n >= 1:
            trail.digest(now_ns=1_764_165_700_000_000_000 + n, totals={
                "audit_records_total": 10.0 * (n + 1), "audit_records_missing_total": 1.0})
    return trail.write(tmp_path / "spans.json"), tmp_path / "state" / "keys"


def check(path: Path, keys: Path) -> Report:
    return verify(read_otlp_json(path), load_public_keys([keys]), from_start=True)


def kinds(report: Report) -> list[str]:
    return [p.kind for p in report.problems]


def test_a_clean_trail_is_intact(trail_file: tuple[Path, Path]) -> None:
    report = check(*trail_file)
    assert report.intact, report.as_dict()
    assert report.records == 30 and report.digests == 2
    assert report.chains == {"inst1/nginx": {"first_seq": 1, "last_seq": 30, "records": 30}}


def test_a_deleted_record_is_a_seq_gap(trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file

    def drop(spans: list[dict[str, Any]]) -> None:
        chained(spans)[11]["_drop"] = True  # seq 12

    edit_spans(path, drop)
    report = check(path, keys)
    assert kinds(report) == ["record_deleted"]
    assert report.problems[0].chain == "inst1/nginx" and report.problems[0].seq == 12


def test_the_last_signed_record_deleted_is_found_by_the_digest(
        trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file
    edit_spans(path, lambda spans: chained(spans)[-1].__setitem__("_drop", True))
    report = check(path, keys)
    assert kinds(report) == ["record_deleted"]
    assert report.problems[0].seq == 30


def test_a_changed_attribute_is_a_modified_record(trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file

    def change(spans: list[dict[str, Any]]) -> None:
        set_attr(chained(spans)[4], "user.id", {"stringValue": "someone-else"})

    edit_spans(path, change)
    report = check(path, keys)
    assert kinds(report) == ["record_modified"]
    problem = report.problems[0]
    assert (problem.seq, problem.where) == (5, "spans.json line 1")
    assert problem.span_id is not None and problem.trace_id is not None


def test_a_forged_record_is_inserted(trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file

    def forge(spans: list[dict[str, Any]]) -> None:
        victim = chained(spans)[7]
        forged = orjson.loads(orjson.dumps(victim))
        forged["spanId"] = "ab" * 8
        set_attr(forged, "user.id", {"stringValue": "alibi"})
        spans.append(forged)  # same seq, content that does not link
        unchained = orjson.loads(orjson.dumps(victim))
        unchained["spanId"] = "cd" * 8
        unchained["attributes"] = [kv for kv in unchained["attributes"]
                                   if not kv["key"].startswith("audit.chain.")]
        spans.append(unchained)
        victim_key = attr(victim, "audit.chain.seq")
        assert int(victim_key) == 8

    edit_spans(path, forge)
    report = check(path, keys)
    assert sorted(kinds(report)) == ["record_inserted", "record_inserted"]
    assert {p.span_id for p in report.problems} == {"ab" * 8, "cd" * 8}
    assert report.problems[0].seq in (8, None)


def test_swapped_records_are_reordered(trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file

    def swap(spans: list[dict[str, Any]]) -> None:
        a, b = chained(spans)[2], chained(spans)[3]  # seq 3 and 4 trade places
        seq_a, seq_b = attr(a, "audit.chain.seq"), attr(b, "audit.chain.seq")
        set_attr(a, "audit.chain.seq", {"intValue": seq_b})
        set_attr(b, "audit.chain.seq", {"intValue": seq_a})

    edit_spans(path, swap)
    report = check(path, keys)
    assert kinds(report) == ["record_reordered", "record_reordered"]
    assert {(p.seq, "intact only at seq") for p in report.problems} == {
        (3, "intact only at seq"), (4, "intact only at seq")}


def test_a_removed_digest_is_missing(trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file

    def drop_first_digest(spans: list[dict[str, Any]]) -> None:
        digests = [s for s in spans if s["name"] == "audit.digest"]
        digests[0]["_drop"] = True

    edit_spans(path, drop_first_digest)
    assert "digest_missing" in kinds(check(path, keys))


def test_a_digest_of_another_key_is_refused(tmp_path: Path,
                                            trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file
    other = SigningKey.from_file(tmp_path / "other.pem")
    # The other key's public half is not given: unknown key.
    impostor = Trail(tmp_path / "impostor", key=other)
    impostor.export([access_line(i) for i in range(3)])
    impostor.digest(now_ns=1)
    with path.open("a") as f:
        f.write(impostor.lines[-1] + "\n")
    assert "digest_key_unknown" in kinds(check(path, keys))

    def forge_payload(spans: list[dict[str, Any]]) -> None:
        digest = [s for s in spans if s["name"] == "audit.digest"][0]
        payload = orjson.loads(attr(digest, "audit.digest.payload"))
        payload["completeness"]["missing"] = 0
        set_attr(digest, "audit.digest.payload", {"stringValue": orjson.dumps(
            payload, option=orjson.OPT_SORT_KEYS).decode()})

    edit_spans(path, forge_payload)
    assert "digest_forged" in kinds(check(path, keys))


def test_cli_exit_codes(trail_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
                        ) -> None:
    path, keys = trail_file
    assert main(["verify", "--file", str(path), "--public-key", str(keys)]) == 0
    assert orjson.loads(capsys.readouterr().out)["intact"] is True
    edit_spans(path, lambda spans: chained(spans)[0].__setitem__("_drop", True))
    assert main(["verify", "--file", str(path), "--public-key", str(keys)]) == 1
    out = orjson.loads(capsys.readouterr().out)
    assert out["problems"][0]["kind"] == "record_deleted"
    assert main(["verify", "--public-key", str(keys)]) == 2
    assert main(["verify", "--file", str(path.with_name("nope.json")),
                 "--public-key", str(keys)]) == 2


def test_a_rotated_key_keeps_old_digests_verifiable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = SigningKey.from_file(state / "old.pem", state / "keys")
    trail = Trail(state, key=old)
    trail.export([access_line(i) for i in range(4)])
    trail.digest(now_ns=1)
    # Rotation: a new key file, the same state directory (chains and digests continue).
    new = SigningKey.from_file(state / "new.pem", state / "keys")
    trail.digests.key = new
    trail.export([access_line(i) for i in range(4, 8)], 10_000)
    trail.digest(now_ns=2)
    path = trail.write(tmp_path / "spans.json")
    assert old.key_id != new.key_id
    assert sorted(p.stem for p in (state / "keys").glob("*.pub")) == sorted(
        [old.key_id, new.key_id])
    report = check(path, state / "keys")
    assert report.intact and report.digests == 2, report.as_dict()
    only_new = tmp_path / "only-new"
    only_new.mkdir()
    (only_new / f"{new.key_id}.pub").write_bytes(new.public_pem)
    assert kinds(check(path, only_new)) == ["digest_key_unknown"]


def test_jaeger_sanitized_zero_duration_is_undone() -> None:
    # Jaeger moves the end of a span that does not end after its start 1 ns on, and says so
    # in @jaeger@warnings: the content is the one the processor hashed.
    from audit_guard.integrity.readers import spans_of_request

    span = {"traceId": "01" * 16, "spanId": "02" * 8, "name": "app record", "kind": 1,
            "startTimeUnixNano": "1000", "endTimeUnixNano": "1000",
            "attributes": [{"key": "audit.source", "value": {"stringValue": "app"}}]}
    sanitized = {**span, "endTimeUnixNano": "1001", "attributes": [
        *span["attributes"], {"key": "@jaeger@warnings", "value": {"arrayValue": {"values": [
            {"stringValue": "Negative duration detected, sanitizing end timestamp. Original "
                            "end timestamp: …"}]}}}]}
    moved = {**span, "endTimeUnixNano": "1001"}

    def digest(raw: dict[str, Any]) -> bytes:
        request = {"resourceSpans": [{"scopeSpans": [{"spans": [raw]}]}]}
        return next(spans_of_request(request, "")).digest

    assert digest(sanitized) == digest(span)
    assert digest(moved) != digest(span)  # without Jaeger's word for it, a change


def test_a_time_no_span_can_hold_is_a_modified_record(trail_file: tuple[Path, Path]) -> None:
    path, keys = trail_file
    edit_spans(path, lambda spans: chained(spans)[3].__setitem__("endTimeUnixNano", "-1"))
    report = check(path, keys)
    assert [(p.kind, p.seq) for p in report.problems] == [("record_modified", 4)]
