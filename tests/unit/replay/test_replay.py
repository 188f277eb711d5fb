"""`audit-guard replay`: the documented JSON Lines, flags, summary and exit codes."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

RID = "4bf92f3577b34da6a3ce929d0e0e47{:02x}"
CLEAN = {"msec": "1764165600.100", "request_id": RID.format(1), "request_method": "GET",
         "request_uri": "/v1/datasets/d1/documents?page=1", "status": "200", "user_id": "u1",
         "app_id": "a1", "request_completion": "OK", "body_bytes_sent": 10,
         "sent_http_content_length": "10", "request_time": "0.250"}
ANON_CUT = {**CLEAN, "request_id": RID.format(2), "request_method": "POST",
            "request_uri": "/v1/chat-messages", "user_id": "", "request_completion": "",
            "sent_http_content_length": "100"}
STATIC = {"msec": "1764165600.300", "request_id": "req-3", "request_method": "GET",
          "request_uri": "/static/app.js", "status": "304", "body_bytes_sent": 0}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audit_guard.cli", "replay", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def jsonl(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines()]


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_golden_output(tmp_path) -> None:
    whole = orjson.dumps({**CLEAN, "request_id": RID.format(4)}).decode()
    cut = whole[: whole.index('"status"') + len('"status":"2')]  # cut inside the status value
    log = write(tmp_path / "access.log", orjson.dumps(CLEAN).decode(), "",
                orjson.dumps(ANON_CUT).decode(), orjson.dumps(STATIC).decode(), cut,
                "GET / HTTP/1.1 200 (not json)")
    # an unterminated last line is a record too
    with log.open("a") as fh:
        fh.write('{"status":"200"')
    result = run(log)
    assert result.returncode == 1, result.stderr
    name = str(log)
    assert jsonl(result.stdout) == [
        {"file": name, "line": 1, "source": "nginx", "trace_id": RID.format(1),
         "span_id": RID.format(1)[:16], "flags": [],
         "fields": {"time": "2025-11-26T14:00:00.100Z", "duration_ms": 250.0, "method": "GET",
                    "path": "/v1/datasets/d1/documents",
                    "route": "/v1/datasets/{dataset_id}/documents", "status": 200,
                    "user_id": "u1", "app_id": "a1", "request_id": RID.format(1),
                    "body_bytes_sent": 10, "content_length": 10, "completed": True}},
        {"file": name, "line": 3, "source": "nginx", "trace_id": RID.format(2),
         "span_id": RID.format(2)[:16],
         "flags": ["truncated:request_incomplete", "truncated:response_short",
                   "missing_field:user_id", "rule:unknown_user"],
         "fields": {"time": "2025-11-26T14:00:00.100Z", "duration_ms": 250.0, "method": "POST",
                    "path": "/v1/chat-messages", "route": "/v1/chat-messages", "status": 200,
                    "app_id": "a1", "request_id": RID.format(2), "body_bytes_sent": 10,
                    "content_length": 100, "completed": False}},
        {"file": name, "line": 4, "source": "nginx",
         "trace_id": jsonl(result.stdout)[2]["trace_id"],  # hash of "req-3", checked below
         "span_id": jsonl(result.stdout)[2]["span_id"], "flags": [],
         "fields": {"time": "2025-11-26T14:00:00.300Z", "method": "GET",
                    "path": "/static/app.js", "status": 304, "request_id": "req-3",
                    "body_bytes_sent": 0}},
        {"file": name, "line": 5, "source": "nginx", "trace_id": RID.format(4),
         "span_id": RID.format(4)[:16],
         "flags": ["truncated:json_cut", "missing_field:status", "missing_field:user_id",
                   "missing_field:app_id", "rule:unknown_user"],
         "fields": {"time": "2025-11-26T14:00:00.100Z", "method": "GET",
                    "path": "/v1/datasets/d1/documents",
                    "route": "/v1/datasets/{dataset_id}/documents", "request_id": RID.format(4)}},
        {"file": name, "line": 6, "source": "nginx",
         "trace_id": jsonl(result.stdout)[4]["trace_id"],
         "span_id": jsonl(result.stdout)[4]["span_id"],
         "flags": ["malformed", "missing_field:method", "missing_field:path",
                   "missing_field:status", "missing_field:time"],
         "fields": {}},
        {"file": name, "line": 7, "source": "nginx",
         "trace_id": jsonl(result.stdout)[5]["trace_id"],
         "span_id": jsonl(result.stdout)[5]["span_id"],
         "flags": ["truncated:json_cut", "missing_field:method", "missing_field:path",
                   "missing_field:time"],
         "fields": {"status": 200}},
    ]
    out = jsonl(result.stdout)
    assert len({o["trace_id"] for o in out}) == 6 and all(len(o["trace_id"]) == 32 for o in out)
    assert "6 record(s), 4 flagged" in result.stderr
    assert "truncated:json_cut" in result.stderr


def test_replay_is_deterministic(tmp_path) -> None:
    log = write(tmp_path / "a.log", orjson.dumps(STATIC).decode(), "garbage line")
    assert run(log).stdout == run(log).stdout


def test_exit_codes(tmp_path) -> None:
    clean = write(tmp_path / "clean.log", orjson.dumps(CLEAN).decode())
    assert run(clean).returncode == 0
    assert run(tmp_path / "missing.log").returncode == 2
    assert "no such file" in run(tmp_path / "missing.log").stderr
    other = write(tmp_path / "app.txt", "2026-11-26 12:00:00.000 INFO [main] hello")
    result = run(other)
    assert result.returncode == 2 and "format not recognized" in result.stderr
    forced = run("--source", "pgaudit", clean)  # an Nginx log read as PostgreSQL: no record
    assert forced.returncode == 0 and forced.stdout == ""
    assert "no pgaudit AUDIT line" in forced.stderr
    assert run("--window", "0", clean).returncode == 2
    assert run("--source", "bogus", clean).returncode == 2
    assert run("--export", "not-an-endpoint", clean).returncode == 2


def test_gzip_and_several_files(tmp_path) -> None:
    plain = write(tmp_path / "access.log", orjson.dumps(CLEAN).decode())
    rotated = tmp_path / "access.log.1.gz"
    with gzip.open(rotated, "wt") as fh:
        fh.write(orjson.dumps(ANON_CUT).decode() + "\n")
    result = run(plain, rotated)
    out = jsonl(result.stdout)
    assert [(o["file"], o["line"]) for o in out] == [(str(plain), 1), (str(rotated), 1)]
    assert result.returncode == 1


def test_replay_flags_equal_service_spans(tmp_path, pipeline) -> None:
    """Replay runs the service's pipeline: same trace ids, same flags as the spans."""
    lines = [orjson.dumps(x).decode() for x in (CLEAN, ANON_CUT, STATIC)] + ["nope"]
    out = jsonl(run(write(tmp_path / "a.log", *lines)).stdout)
    req = ExportLogsServiceRequest()
    scope = req.resource_logs.add().scope_logs.add()
    for line in lines:
        scope.log_records.add().body.string_value = line
    payload, _ = pipeline.process_logs(req, now_ns=1)
    spans = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    for record, span in zip(out, spans, strict=True):
        attrs = {kv.key: kv.value for kv in span.attributes}
        span_flags = [v.string_value for v in attrs["audit.flags"].array_value.values] \
            if "audit.flags" in attrs else []
        assert (record["trace_id"], record["span_id"]) == (span.trace_id.hex(), span.span_id.hex())
        assert record["flags"] == span_flags


def test_export_sends_the_spans(tmp_path, downstream) -> None:
    log = write(tmp_path / "access.log", *(orjson.dumps(x).decode() for x in (CLEAN, ANON_CUT)))
    result = run("--export", f"127.0.0.1:{downstream.port}", log)
    assert result.returncode == 1, result.stderr
    spans = downstream.spans()
    assert [s.trace_id.hex() for s in spans] == [RID.format(1), RID.format(2)]
