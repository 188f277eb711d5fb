"""End to end: `audit-guard serve` as a process, a flagged nginx record in over OTLP, and the
admin API and status page on admin.listen show it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from demo.procs import ManagedProcess, free_port, port_open, wait_until
from tests.support.otlp_doubles import logs_request

TRACE = "0af7651916cd43dd8448eb211c80319c"
TOKEN = "e2e-token-0123456789"
FLAGGED = orjson.dumps(
    {"msec": "1764165600.5", "request_id": TRACE, "request_method": "POST",
     "uri": "/v1/chat-messages", "status": "401", "user_id": "u-e2e", "app_id": "a1"}
).decode()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def serving(tmp_path, downstream, **env: str) -> Iterator[tuple[int, str]]:
    """A real `audit-guard serve` exporting to `downstream`, ready: (OTLP port, admin URL)."""
    otlp, admin = free_port(), free_port()
    proc = ManagedProcess(
        "audit-guard", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
        env={"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp}",
             "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{admin}",
             "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}", **env},
    ).start()
    try:
        base = f"http://127.0.0.1:{admin}"
        proc.wait_ready(lambda: port_open(otlp) and get(base + "/readyz")[0] == 200, 60)
        yield otlp, base
    finally:
        proc.stop()


@pytest.fixture
def serve(tmp_path, downstream):
    with serving(tmp_path, downstream, AUDIT_GUARD_ADMIN__TOKEN=TOKEN) as ports:
        yield ports


def send_flagged(otlp: int) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{otlp}")
    try:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs_request(FLAGGED), timeout=10)
    finally:
        channel.close()


def test_flagged_record_shows_in_api_and_page(serve, downstream) -> None:
    otlp, base = serve
    assert get(base + "/healthz")[0] == 200
    send_flagged(otlp)
    assert len(downstream.spans()) == 1
    status, body = get(base + "/api/flags?source=nginx&user=u-e2e")
    assert status == 200
    flags = json.loads(body)["flags"]
    assert [f["trace_id"] for f in flags] == [TRACE]
    assert "rule:auth_failure" in flags[0]["flags"]
    assert (flags[0]["method"], flags[0]["path"], flags[0]["status"]) == (
        "POST", "/v1/chat-messages", 401)
    status, body = get(base + "/api/status")
    nginx = {s["name"]: s for s in json.loads(body)["sources"]}["nginx"]
    assert nginx["records_total"] == 1 and nginx["health"] == "amber"
    rules = {r["name"]: r for r in json.loads(get(base + "/api/rules")[1])["rules"]}
    assert rules["auth_failure"]["matches"] == 1
    status, page = get(base + "/")
    assert status == 200 and TRACE in page.decode()
    status, metrics = get(base + "/metrics")
    assert status == 200 and b'audit_records_total{' in metrics


def test_put_rules_over_http_needs_the_token(serve) -> None:
    _, base = serve
    body = b"- {name: teapot, when: 'status == `418`', severity: low}\n"

    def put(headers: dict[str, str]) -> int:
        req = urllib.request.Request(base + "/api/rules", data=body, method="PUT",
                                     headers={"Content-Type": "application/yaml", **headers})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert put({}) == 401
    assert put({"Authorization": "Bearer nope"}) == 401
    assert put({"Authorization": f"Bearer {TOKEN}"}) == 200
    names = [r["name"] for r in json.loads(get(base + "/api/rules")[1])["rules"]]
    assert names == ["teapot"]


def test_taken_admin_port_fails_start_up(downstream) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "audit_guard.cli", "serve"],
            env={**os.environ, "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{port}",
                 "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{free_port()}"},
            capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"admin.listen=127.0.0.1:{port}" in proc.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_status_page_in_headless_chromium(serve, tmp_path) -> None:
    assert _chromium() is not None, "chromium is not installed: run scripts/bootstrap"
    otlp, base = serve
    send_flagged(otlp)
    wait_until(lambda: TRACE.encode() in get(base + "/api/flags")[1], 10, "the flag")
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=5000", "--dump-dom", base + "/"],
        capture_output=True, text=True, timeout=120).stdout
    assert TRACE in dom
    # The refresh script ran: it replaces the server-rendered "rendered …" line.
    assert 'id="updated">updated ' in dom, dom[-2000:]
