"""Findings as OTLP log records (issue #15), through the real chain: the collector with the shipped
config reads the logs → `audit-guard serve` with `findings.output: both` → spans to the trace
backend, log records back into the collector's `otlp/egress` → `logs/egress` → the `file`
exporter's JSON lines. The file must hold what `audit-guard replay` reports for the same input
(the same records by source, trace id and span id, with the same flags), and the same ids and
flags as the spans.

The trace backend is RecordingDownstream (a test double: a gRPC TraceService that records what it
accepts), as in test_shell_equivalence.py.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_guard.config import load_settings
from audit_guard.replay import replay
from demo.backends import start_collector
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from tests.support.otlp_doubles import RecordingDownstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WINDOW_S = 3
N = 30
DROPPED = {4, 17}  # requests whose app record never came: missing_record
ANONYMOUS = {9}  # no user id: missing_field:user_id, rule:unknown_user
DENIED = {21}  # 403 on a dataset: rule:dataset_access_denied


def rid(i: int) -> str:
    return f"{0xF0000 + i:032x}"


def access_line(i: int, at: float) -> str:
    path = "/v1/datasets/ds-1/documents" if i in DENIED else "/v1/chat-messages"
    return orjson.dumps({
        "msec": round(at, 3), "request_id": rid(i), "remote_addr": "10.0.0.7",
        "request_method": "POST", "request_uri": path, "status": "403" if i in DENIED else "200",
        "request_completion": "OK", "body_bytes_sent": 10, "request_time": 0.2,
        "user_id": "" if i in ANONYMOUS else f"user-{i % 3}", "app_id": "app-1",
    }).decode()


def app_line(i: int, at: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return orjson.dumps({
        "ts": f"{stamp}.{int(at * 1000) % 1000:03d}Z", "severity": "INFO", "service": "api",
        "trace_id": rid(i), "message": f"POST /v1/chat-messages 200 200.0 {rid(i)}",
        "identity": {"tenant_id": "t1", "user_id": f"user-{i % 3}", "user_type": "end_user"},
        "attributes": {"app_id": "app-1"},
    }).decode()


def lay_corpus(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True)
    t0 = time.time() - 300
    access = [access_line(i, t0 + i * 0.5 + 0.2) for i in range(N)]
    app = [app_line(i, t0 + i * 0.5 + 0.1) for i in range(N) if i not in DROPPED]
    files = {"access": root / "access.log", "app": root / "app-audit.json.log"}
    files["access"].write_text("\n".join(access) + "\n")
    files["app"].write_text("\n".join(app) + "\n")
    return files


def _value(value: dict[str, Any]) -> Any:
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return next(iter(value.values()), None)


def file_records(path: Path) -> list[dict[str, Any]]:
    """The file exporter's log records (OTLP JSON, one request per line)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        for resource_logs in orjson.loads(line).get("resourceLogs", []):
            for scope_logs in resource_logs.get("scopeLogs", []):
                for record in scope_logs.get("logRecords", []):
                    attributes = {a["key"]: _value(a["value"])
                                  for a in record.get("attributes", [])}
                    out.append({"trace": record.get("traceId", ""),
                                "span": record.get("spanId", ""),
                                "source": attributes.get("audit.source"),
                                "flags": tuple(sorted(attributes.get("audit.flags", []))),
                                "severity": record.get("severityText"),
                                "body": record.get("body", {}).get("stringValue"),
                                "event": record.get("eventName")})
    return out


def replayed(files: dict[str, Path]) -> dict[tuple[str, str, str], tuple[str, ...]]:
    out, err = io.BytesIO(), io.StringIO()
    settings = load_settings(reconcile={"window_s": WINDOW_S}, error_join_window_s=WINDOW_S)
    replay(list(files.values()), settings=settings, out=out, err=err)
    rows = {}
    for line in out.getvalue().splitlines():
        obj = orjson.loads(line)
        rows[(obj["source"], obj["trace_id"], obj["span_id"])] = tuple(sorted(obj["flags"]))
    return rows


def test_the_file_exporter_holds_replay_s_findings(tmp_path: Path) -> None:
    files = lay_corpus(tmp_path / "logs")
    downstream = RecordingDownstream()
    downstream.server.start()
    otlp = free_port()
    collector, endpoints = start_collector(
        tmp_path / "collector", access_log=files["access"], app_log=files["app"],
        processor_endpoint=f"127.0.0.1:{otlp}", traces_endpoint=f"127.0.0.1:{free_port()}",
        vts_target=f"127.0.0.1:{free_port()}")
    findings = endpoints.storage_dir / "findings.jsonl"  # the shipped config's path
    expected = N + (N - len(DROPPED)) + len(DROPPED)  # access, app, missing_record
    try:
        serve = ManagedProcess(
            "serve", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
            env={"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp}",
                 "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
                 "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}",
                 "AUDIT_GUARD_FINDINGS__OUTPUT": "both",
                 "AUDIT_GUARD_FINDINGS__LOGS_EXPORTER__ENDPOINT": endpoints.egress,
                 "AUDIT_GUARD_RECONCILE__WINDOW_S": str(WINDOW_S),
                 "AUDIT_GUARD_ERROR_JOIN_WINDOW_S": str(WINDOW_S)}).start()
        try:
            serve.wait_ready(lambda: port_open(otlp), 60)
            wait_until(lambda: len(file_records(findings)) >= expected, 90,
                       f"{expected} log records in {findings}")
            time.sleep(2 * WINDOW_S)  # anything else would show up by now
        finally:
            serve.stop()
    finally:
        collector.stop()
        downstream.server.stop(None)

    logged = file_records(findings)
    by_id = {(r["source"], r["trace"], r["span"]): r["flags"] for r in logged}
    assert len(by_id) == len(logged) == expected  # one record each, none twice
    replay_rows = replayed(files)
    assert by_id == replay_rows
    # what the corpus holds is there to be compared (not a vacuous equality)
    flags = list(by_id.values())
    assert sum("missing_record" in f for f in flags) == len(DROPPED)
    assert sum("rule:unknown_user" in f for f in flags) == len(ANONYMOUS)
    assert sum("rule:dataset_access_denied" in f for f in flags) == len(DENIED)
    # the spans tell the same story: same ids, same flags
    spans = {}
    for request in downstream.requests:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attributes = {a.key: a for a in span.attributes}
                    found = attributes.get("audit.flags")
                    spans[(attributes["audit.source"].value.string_value, span.trace_id.hex(),
                           span.span_id.hex())] = tuple(sorted(
                               v.string_value for v in found.value.array_value.values)
                           ) if found else ()
    assert spans == by_id
    for record in logged:
        assert record["event"] == "audit.record"
        assert record["severity"] == ("WARN" if record["flags"] else "INFO")
        assert record["body"]
