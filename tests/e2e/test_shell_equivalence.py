"""One engine, two shells (issue #17): the same log files give the same verdicts through the
real collector with the shipped config → `audit-guard serve` as through `audit-guard replay`.

The corpus is a backlog (written ten minutes before the chain starts, as after an outage or at a
first start) with what goes wrong in real deployments: app audit records that never came,
streams cut by the upstream (the error log's `upstream prematurely closed` lines), an error
event that joins no request, a line nginx wrote twice, a Docker-wrapped app log with a line the
runtime read 9 s late and a line cut short by a container stop, beside a plain app log.

Compared per record (source, trace id, span id → flags), and the missing_record requests and
unjoined error events as sets. One thing is compared per trace instead of per record: a cut
stream's flag. The collector reads the error log and the access log on their own, so serve may
get a request's access record before its error line; it then reports the cut as a flagged child
span of the request (`audit.late_evidence`) rather than on the access span — same trace, same
flag, a different span.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import orjson
import pytest

from audit_guard.config import load_settings
from audit_guard.replay import replay
from demo.backends import start_collector
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from tests.support.otlp_doubles import RecordingDownstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CUTS = {"truncated:upstream_closed", "truncated:request_incomplete"}
WINDOW_S = 3
N = 60
DROPPED = {7, 23, 41}  # requests whose app record never came
CUT = {12: 501, 30: 502}  # request → its connection serial, cut by the upstream
DOCKER = range(45, N)  # these requests' app records are in a Docker json-file log
DELAYED = 50  # read by the runtime 9 s after the app wrote it
STOPPED = 55  # the container stopped while writing this one's line


def rid(i: int) -> str:
    return f"{0xA0000 + i:032x}"


def access_line(i: int, at: float) -> str:
    return orjson.dumps({
        "time_iso8601": "", "msec": round(at, 3), "request_id": rid(i),
        "connection": CUT.get(i, 1000 + i), "connection_requests": 1,
        "remote_addr": "10.0.0.7", "request_method": "POST",
        "request_uri": "/v1/chat-messages", "uri": "/v1/chat-messages",
        "server_protocol": "HTTP/1.1", "host": "api.example.com",
        "server_name": "api.example.com", "status": "200", "request_completion": "OK",
        "body_bytes_sent": 2048, "bytes_sent": 2248, "sent_http_content_length": "",
        "sent_http_content_type": "text/event-stream", "upstream_status": "200",
        "upstream_response_length": "2048", "upstream_bytes_received": "2248",
        "upstream_response_time": "0.900", "upstream_addr": "172.18.0.5:5001",
        "request_time": 0.901, "http_user_agent": "Mozilla/5.0", "http_traceparent": "",
        "user_id": f"user-{i % 5}", "app_id": "app-1",
    }).decode()


def iso(at: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f"{stamp}.{int(at * 1000) % 1000:03d}Z"


def app_line(i: int, at: float) -> str:
    return orjson.dumps({
        "ts": iso(at), "severity": "INFO", "service": "api",
        "caller": "ext_request_logging.py:80", "trace_id": rid(i),
        "message": f"POST /v1/chat-messages 200 900.0 {rid(i)}",
        "identity": {"tenant_id": "t1", "user_id": f"user-{i % 5}", "user_type": "end_user"},
        "attributes": {"app_id": "app-1"},
    }).decode()


def docker(log: str, at: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return orjson.dumps({"log": log, "stream": "stdout",
                         "time": f"{stamp}.{int(at * 1e9) % 1_000_000_000:09d}Z"}).decode()


def error_line(at: float, connection: int) -> str:
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(at))
    return (f'{stamp} [error] 31#31: *{connection} upstream prematurely closed connection '
            'while reading upstream, client: 10.0.0.7, server: api.example.com, request: '
            '"POST /v1/chat-messages HTTP/1.1", upstream: '
            '"http://172.18.0.5:5001/v1/chat-messages", host: "api.example.com"')


def lay_corpus(root: Path) -> dict[str, Path]:
    t0 = time.time() - 600  # a backlog: written ten minutes before the chain reads it
    files = {"access": root / "access.log", "app": root / "app-audit.json.log",
             "error": root / "nginx-error.log",
             "docker": root / "containers" / "c1" / "c1-json.log"}
    files["docker"].parent.mkdir(parents=True)
    access, app, containers = [], [], []
    for i in range(N):
        at = t0 + i * 0.5
        access.append(access_line(i, at + 0.9))
        if i == 20:
            access.append(access[-1])  # nginx wrote this line twice
        if i in DROPPED:
            continue
        line = app_line(i, at + 0.4)
        if i not in DOCKER:
            app.append(line)
        elif i == STOPPED:  # the container stopped mid-line: no "\n", the next line later
            containers.append(docker(line[:40], at + 0.45))
        else:
            containers.append(docker(line + "\n", at + (9.4 if i == DELAYED else 0.45)))
    errors = [error_line(t0 + i * 0.5 + 0.9, conn) for i, conn in CUT.items()]
    errors.append(error_line(t0 + 5, 999))  # joins no request
    for key, lines in (("access", access), ("app", app), ("docker", containers),
                       ("error", errors)):
        files[key].write_text("\n".join(lines) + "\n")
    return files


def flags_of(attributes: dict) -> tuple[str, ...]:
    return tuple(sorted(attributes.get("audit.flags", [])))


def served(tmp_path: Path, files: dict[str, Path], env: dict[str, str]) -> list[dict]:
    """The spans `serve` sent for the corpus, as {source, trace, span, flags, missing}."""
    downstream = RecordingDownstream()
    downstream.server.start()
    otlp = free_port()
    serve = ManagedProcess(
        "serve", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
        env={**env, "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp}",
             "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
             "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}"}).start()
    try:
        serve.wait_ready(lambda: port_open(otlp), 60)
        collector, _ = start_collector(
            tmp_path / "collector", access_log=files["access"], app_log=files["app"],
            container_logs=str(files["docker"].parent.parent / "*" / "*-json.log"),
            nginx_error_log=files["error"], processor_endpoint=f"127.0.0.1:{otlp}",
            traces_endpoint=f"127.0.0.1:{free_port()}", vts_target=f"127.0.0.1:{free_port()}")
        try:
            records = N + 1 + (N - len(DROPPED))  # access lines, app lines
            # + missing_record spans (the stop-cut line lost its trace id), + unjoined event
            expected = records + len(DROPPED) + 1 + 1

            def arrived() -> bool:
                return len(downstream.spans()) >= expected

            wait_until(arrived, 90, f"{expected} spans at the backend")
            time.sleep(2 * WINDOW_S)  # anything else would show up by now
        finally:
            collector.stop()
    finally:
        serve.stop()
        downstream.server.stop(None)
    out = []
    for request in downstream.requests:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    out.append({"source": attributes.get("audit.source"),
                                "trace": span.trace_id.hex(), "span": span.span_id.hex(),
                                "flags": flags_of(attributes),
                                "late": bool(attributes.get("audit.late_evidence"))})
    return out


def _value(value) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def replayed(files: dict[str, Path]) -> list[dict]:
    out, err = io.BytesIO(), io.StringIO()
    settings = load_settings(reconcile={"window_s": WINDOW_S}, error_join_window_s=WINDOW_S)
    replay(list(files.values()), settings=settings, out=out, err=err)
    rows = []
    for line in out.getvalue().splitlines():
        obj = orjson.loads(line)
        rows.append({"source": obj["source"], "trace": obj["trace_id"], "span": obj["span_id"],
                     "flags": tuple(sorted(obj["flags"])), "late": False,
                     "missing": obj["file"] is None})
    return rows


def verdicts(rows: list[dict]) -> tuple[dict, dict, set, set]:
    """(per record: flags without cut flags; per trace: cut flags; missing traces; unjoined
    error events' traces are not comparable (their ids name the line), so their count)."""
    records: dict[tuple[str, str, str], tuple[str, ...]] = {}
    cuts: dict[str, set[str]] = {}
    missing, unjoined = set(), 0
    for row in rows:
        found = set(row["flags"])
        if "missing_record" in found:
            missing.add(row["trace"])
            continue
        if row["source"] == "nginx_error":
            if row["late"]:  # joined, under its request: the request's cut flag
                cuts.setdefault(row["trace"], set()).update(found & CUTS)
            else:
                unjoined += 1
            continue
        cuts.setdefault(row["trace"], set()).update(found & CUTS)
        records[(row["source"], row["trace"], row["span"])] = tuple(sorted(found - CUTS))
    return records, {t: c for t, c in cuts.items() if c}, missing, {unjoined}


def test_collector_and_serve_give_replay_s_verdicts(tmp_path: Path) -> None:
    files = lay_corpus(tmp_path / "logs")
    env = {"AUDIT_GUARD_RECONCILE__WINDOW_S": str(WINDOW_S),
           "AUDIT_GUARD_ERROR_JOIN_WINDOW_S": str(WINDOW_S)}
    serve_rows = served(tmp_path, files, env)
    replay_rows = replayed(files)
    s_records, s_cuts, s_missing, s_unjoined = verdicts(serve_rows)
    r_records, r_cuts, r_missing, r_unjoined = verdicts(replay_rows)
    # The corpus shows what it should, in replay ...
    # (the line cut by the container stop lost its trace id: its request is missing too)
    assert r_missing == {rid(i) for i in DROPPED | {STOPPED}}
    assert r_cuts == {rid(i): {"truncated:upstream_closed"} for i in CUT}
    assert r_unjoined == {1}
    flagged = {k[1]: f for k, f in r_records.items() if k[0] == "app"}
    assert "delayed" in flagged[rid(DELAYED)]
    assert not any("delayed" in f for t, f in flagged.items() if t != rid(DELAYED))
    assert any("truncated:partial_line" in f or "malformed" in f for f in r_records.values())
    assert sum("duplicate" in f for f in r_records.values()) == 1
    # ... and serve agrees, record by record.
    assert s_missing == r_missing
    assert s_cuts == r_cuts
    assert s_unjoined == r_unjoined
    assert set(s_records) == set(r_records)
    differ = {k: (s_records[k], r_records[k]) for k in r_records if s_records[k] != r_records[k]}
    assert not differ, differ
