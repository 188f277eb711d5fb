"""The audit view in a real browser: `audit-guard serve` as a process, a cut stream (nginx error
line + access line), a request whose app record never comes (reconcile.window_s = 1) and a rule
hit (nginx + the app's own record) in over OTLP; headless Chromium renders /requests/<trace id>
of each and the status page linking them.

Screenshots go to the test's tmp dir; AUDIT_GUARD_UPDATE_SCREENSHOTS=1 also writes them to
docs/audit-view-*.png (the ones docs/admin-api.md shows).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from demo.procs import repo_root, wait_until
from tests.e2e.test_admin_e2e import get, serving
from tests.support.otlp_doubles import logs_request

pytestmark = pytest.mark.timeout(300)

CUT = "4bf92f3577b34da6a3ce929d0e0e4736"
MISSING = "5b8aa5a2d2c872e8321cf37308d69df2"
DENIED = "0af7651916cd43dd8448eb211c80319c"
TRACE_UI = "http://127.0.0.1:16686/trace/{trace_id}"
DOCS = repo_root() / "docs"


def access(rid: str, end: float, **extra: object) -> str:
    return orjson.dumps({
        "msec": f"{end:.3f}", "request_id": rid, "connection": 7, "connection_requests": 1,
        "remote_addr": "10.0.3.7", "request_method": "POST", "request_uri": "/v1/chat-messages",
        "status": "200", "request_completion": "OK", "user_id": "u-4711", "app_id": "app-chat",
        "body_bytes_sent": 812, "sent_http_content_length": "",
        "sent_http_content_type": "text/event-stream", "upstream_status": "200",
        "upstream_bytes_received": "1024", "request_time": 1.204, **extra}).decode()


def error_line(end: float) -> str:
    written = datetime.fromtimestamp(int(end), UTC).strftime("%Y/%m/%d %H:%M:%S")
    return (f"{written} [error] 811#811: *7 upstream prematurely closed connection while "
            'reading upstream, client: 10.0.3.7, server: dify, request: "POST '
            '/v1/chat-messages HTTP/1.1", upstream: "http://10.0.3.2:5001/v1/chat-messages", '
            'host: "dify.example.com"')


def app_line(rid: str, request: str, when: float) -> str:
    """Dify's request-log line (LOG_OUTPUT_FORMAT=json, ENABLE_REQUEST_LOGGING=true)."""
    ts = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    return orjson.dumps({
        "ts": ts.replace("+00:00", "Z"), "severity": "INFO", "service": "api",
        "caller": "ext_request_logging.py:52", "message": f"{request} 12.5 {rid}",
        "trace_id": rid, "span_id": "00f067aa0ba902b7",
        "identity": {"tenant_id": "t-1", "user_id": "u-4711", "user_type": "account"},
        "attributes": {"app_id": "app-kb"}}).decode()


@pytest.fixture
def serve(tmp_path, downstream):
    with serving(tmp_path, downstream, AUDIT_GUARD_ADMIN__TRACE_URL=TRACE_UI,
                 AUDIT_GUARD_RECONCILE__WINDOW_S="1") as ports:
        yield ports


def send(otlp: int, source: str, *bodies: str) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{otlp}")
    try:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(
            logs_request(*bodies, source=source), timeout=10)
    finally:
        channel.close()


def chromium(tmp_path: Path, *args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: run scripts/bootstrap"
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", *args],
        capture_output=True, text=True, timeout=120, check=True).stdout


def screenshot(tmp_path: Path, url: str, name: str, height: int) -> Path:
    out = tmp_path / f"audit-view-{name}.png"
    chromium(tmp_path, f"--window-size=1000,{height}", f"--screenshot={out}", url)
    assert out.stat().st_size > 10_000, "an empty page"
    if os.environ.get("AUDIT_GUARD_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(out, DOCS / out.name)
    return out


def test_audit_view_in_headless_chromium(serve, tmp_path) -> None:
    otlp, base = serve
    now = time.time()
    send(otlp, "nginx_error", error_line(now))  # nginx writes the cut's error line first
    send(otlp, "nginx_access", access(CUT, now + 0.4))
    send(otlp, "app", app_line(CUT, "POST /v1/chat-messages 200", now + 0.3))  # clean: not kept
    send(otlp, "nginx_access", access(MISSING, now + 0.5, request_method="GET",
                                      request_uri="/v1/datasets/ds-5/documents",
                                      connection=9, sent_http_content_length="3120",
                                      body_bytes_sent=3120, upstream_bytes_received="3120"))
    path = "/v1/datasets/ds-1/documents/doc-9"
    send(otlp, "nginx_access", access(DENIED, now + 0.6, request_method="DELETE",
                                      request_uri=path, status="403", connection=8, app_id="app-kb",
                                      body_bytes_sent=61, upstream_bytes_received="61"))
    send(otlp, "app", app_line(DENIED, f"DELETE {path} 403", now + 0.55))
    wait_until(lambda: get(f"{base}/api/requests/{MISSING}")[0] == 200, 30,
               "the missing_record marker (reconcile.window_s = 1)")

    views = {name: json.loads(get(f"{base}/api/requests/{tid}")[1])
             for name, tid in (("cut", CUT), ("missing", MISSING), ("rule", DENIED))}
    assert [f["flag"] for f in views["cut"]["flags"]] == ["truncated:upstream_closed"]
    assert views["missing"]["missing"] == ["app"]
    assert {f["source"] for f in views["rule"]["flags"]
            if f["flag"] == "rule:dataset_access_denied"} == {"nginx", "app"}

    dom = chromium(tmp_path, "--dump-dom", f"{base}/requests/{CUT}")
    assert "truncated:upstream_closed" in dom and "Error-log evidence" in dom
    assert "upstream prematurely closed connection while reading upstream" in dom
    assert f'href="{TRACE_UI.replace("{trace_id}", CUT)}"' in dom
    dom = chromium(tmp_path, "--dump-dom", f"{base}/requests/{MISSING}")
    assert 'class="record missing"' in dom and "missing app audit record" in dom
    dom = chromium(tmp_path, "--dump-dom", f"{base}/requests/{DENIED}")
    assert "rule:dataset_access_denied" in dom and "app audit record" in dom
    assert "refused with 403" in dom
    # The status page links every flagged trace to its view, after its refresh script ran too.
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", base + "/")
    assert 'id="updated">updated ' in dom
    for tid in (CUT, MISSING, DENIED):
        assert f'href="/requests/{tid}"' in dom
    assert "trace UI</a>" in dom
    assert get(f"{base}/requests/{'e' * 32}")[0] == 404

    for name, tid, height in (("cut-stream", CUT, 1480), ("missing-app-record", MISSING, 900),
                              ("rule-hit", DENIED, 1500)):
        screenshot(tmp_path, f"{base}/requests/{tid}", name, height)
