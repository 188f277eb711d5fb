"""`audit-guard replay` over several sources at once: nginx + app (missing_record), app inside
Docker json-file logs (ingest lag → delayed, unfinished 16 KiB pieces → partial_line), pgaudit
(sqlcommenter traceparent joins the statement to its request)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

T0 = 1764165600  # 2025-11-26T14:00:00Z
RIDS = [f"{n:02x}" * 16 for n in (0xA1, 0xB2, 0xC3)]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audit_guard.cli", "replay", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def nginx_line(rid: str, path: str, at: float) -> str:
    return orjson.dumps({"msec": f"{at:.3f}", "request_id": rid, "request_method": "POST",
                         "request_uri": path, "status": "200", "user_id": "u1",
                         "app_id": "a1", "request_completion": "OK"}).decode()


def dify_line(rid: str, at: float, user: str = "u1") -> str:
    """As Dify's StructuredJSONFormatter writes it (see tests/unit/sources/test_app_source.py)."""
    ts = f"2025-11-26T14:00:{at - T0:06.3f}Z"
    return orjson.dumps({"ts": ts, "severity": "INFO", "service": "api",
                         "caller": "ext_request_logging.py:80",
                         "message": f"POST /v1/chat-messages 200 12.5 {rid}", "trace_id": rid,
                         "identity": {"tenant_id": "t1", "user_id": user,
                                      "user_type": "end_user"}}).decode()


def test_missing_app_records_are_reported_with_their_request(tmp_path: Path) -> None:
    nginx = tmp_path / "access.log"
    nginx.write_text("\n".join([
        nginx_line(RIDS[0], "/v1/chat-messages", T0 + 1),
        nginx_line(RIDS[1], "/v1/chat-messages", T0 + 2),
        nginx_line(RIDS[2], "/v1/chat-messages", T0 + 3),
        nginx_line("d4" * 16, "/static/app.js", T0 + 4),  # not audited: no app record expected
    ]) + "\n")
    app = tmp_path / "app.log"
    # RIDS[0] logged in time; RIDS[1] logged 45 s later (outside a 30 s window); RIDS[2] never.
    app.write_text(dify_line(RIDS[0], T0 + 0.9) + "\n" + dify_line(RIDS[1], T0 + 47) + "\n")
    result = run(nginx, app, "--window", "30")
    assert result.returncode == 1, result.stderr
    out = [orjson.loads(x) for x in result.stdout.splitlines()]
    app_rows = [o for o in out if o["file"] == str(app)]
    assert [o["source"] for o in app_rows] == ["app", "app"]
    # Dify never logs an app id: on an audited path that is a real gap in the audit trail
    assert app_rows[0]["trace_id"] == RIDS[0]
    assert app_rows[0]["flags"] == ["missing_field:app_id"]
    assert app_rows[0]["fields"]["user_id"] == "u1"
    missing = [o for o in out if o["file"] is None]
    assert [(o["source"], o["trace_id"], o["flags"], o["line"]) for o in missing] == [
        ("app", RIDS[1], ["missing_record"], None), ("app", RIDS[2], ["missing_record"], None)]
    assert missing[0]["fields"]["path"] == "/v1/chat-messages"
    assert "2 audited request(s) with no app audit record" in result.stderr
    # a wider window accepts the late record
    wide = [orjson.loads(x) for x in run(nginx, app, "--window", "60").stdout.splitlines()]
    assert [o["trace_id"] for o in wide if o["file"] is None] == [RIDS[2]]
    # one source alone: nothing to reconcile
    assert not [o for o in map(orjson.loads, run(nginx).stdout.splitlines()) if o["file"] is None]


def docker(log: str, at_ns: int, stream: str = "stdout") -> str:
    secs, ns = divmod(at_ns, 1_000_000_000)
    stamp = f"2025-11-26T14:00:{secs - T0:02d}.{ns:09d}Z"
    return orjson.dumps({"log": log, "stream": stream, "time": stamp}).decode()


def test_app_log_inside_docker_json_file(tmp_path: Path) -> None:
    on_time = dify_line(RIDS[0], T0 + 1.0)
    late = dify_line(RIDS[1], T0 + 2.0)
    huge = dify_line(RIDS[2], T0 + 3.0, user="x" * 40_000)
    pieces = [huge[i:i + 16384] for i in range(0, len(huge), 16384)]
    lines = [
        docker(on_time + "\n", (T0 + 1) * 10**9 + 200_000_000),  # read 0.2 s after logging
        docker(late + "\n", (T0 + 9) * 10**9),  # read 7 s after: block-buffered stdout
        # the writer died mid-line: the last piece never came
        *[docker(p, (T0 + 3) * 10**9 + 5) for p in pieces[:-1]],
    ]
    path = tmp_path / "abc-json.log"
    path.write_text("\n".join(lines) + "\n")
    result = run(path)
    out = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert [(o["line"], o["source"]) for o in out] == [(1, "app"), (2, "app"), (3, "app")]
    no_app = "missing_field:app_id"  # Dify never logs an app id
    assert out[0]["flags"] == [no_app] and out[0]["fields"]["ingest_lag_ms"] == 200
    assert out[1]["flags"] == [no_app, "delayed"] and out[1]["fields"]["ingest_lag_ms"] == 7000
    assert "truncated:partial_line" in out[2]["flags"]
    assert "docker" in result.stderr and result.returncode == 1


def test_pgaudit_statement_joins_its_request(tmp_path: Path) -> None:
    tp = f"00-{RIDS[0]}-00f067aa0ba902b7-01"
    log = tmp_path / "postgresql.log"
    log.write_text(
        "2025-11-26 14:00:01.250 UTC [4242] app@dify LOG:  AUDIT: SESSION,7,1,WRITE,UPDATE,"
        "TABLE,public.datasets,\"UPDATE datasets SET name = 'a, b'\n"
        f"\tWHERE id = 3 /*traceparent='{tp}'*/\",<none>\n"
        "2025-11-26 14:00:02.000 UTC [4242] app@dify LOG:  duration: 0.5 ms\n"
    )
    result = run(log)
    out = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert len(out) == 1, result.stderr  # the duration line is not an audit record
    (row,) = out
    assert (row["source"], row["line"], row["trace_id"]) == ("pgaudit", 1, RIDS[0])
    assert row["flags"] == []
    assert row["fields"]["db.operation.name"] == "UPDATE"
    assert row["fields"]["db.collection.name"] == "public.datasets"
    assert "WHERE id = 3" in row["fields"]["db.query.text"]
    assert row["fields"]["user_id"] == "app"
    assert result.returncode == 0
