"""The Dify overlay's identity route, end to end through the real programs on loopback:

    client → real nginx running Dify's own config as the overlay builds it (Dify's templates,
             the overlay's conf.d file and proxy template, the shipped snippets; rendered by
             Dify's entrypoint steps from the compose-merged service)
           → TEST DOUBLE of Dify's API (tests/support/dify_api_double.py: Dify's auth routes,
             identity headers from the real patch deploy/dify/api/audit_guard_gunicorn.py, and
             Dify's own JSON request-log line per request, as with request logging + OTel on)
    nginx's JSON access log + error log, the api's log → real collector
           (collector-config/audit-guard.yaml) → `audit-guard serve` → real Jaeger.

Checked as an operator would look, in Jaeger: the nginx span of every authenticated request
carries user.id and app.id and no missing_field flag for them; the client never sees the
identity headers; the app got nginx's trace context. Controls: the same request to an unpatched
(stock) Dify, and an unauthenticated one, are flagged missing_field:user_id. Dify's own request
log (the complementary route) joins each trace as the nginx span's child, with what it can say.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from demo.backends import JaegerClient, span_tags, start_collector, start_jaeger
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from tests.support.dify_api_double import (
    APP_KEYS,
    CONSOLE_SESSIONS,
    OWNER,
    PASSPORTS,
    STOCK_HEADER,
    DifyApiDouble,
    EndUser,
)
from tests.support.dify_nginx import DifyNginx, merged_model, render_dify_nginx

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CHAT, FLOW = APP_KEYS["app-k3yChat"], APP_KEYS["app-k3yFlow"]
ACCOUNT = CONSOLE_SESSIONS["console-session-ops"]
WEB_APP, WEB_SESSION = PASSPORTS["passport-web-1"]
CONSOLE_APP = "3e7b9f2c-1d4a-4c8e-b5f6-0a9d8c7e6b51"

# name → (method, path, headers, JSON body, expected user_id, expected app_id)
REQUESTS: dict[str, tuple[str, str, dict[str, str], dict[str, Any] | None, str, str]] = {
    "service_api_post": ("POST", "/v1/chat-messages", {"Authorization": "Bearer app-k3yChat"},
                         {"query": "hi", "user": "alice@example.com",
                          "response_mode": "blocking"}, "end_user:alice@example.com", CHAT),
    "service_api_get": ("GET", "/v1/messages?user=bob&conversation_id=c1",
                        {"Authorization": "Bearer app-k3yFlow"}, None, "end_user:bob", FLOW),
    "console": ("GET", f"/console/api/apps/{CONSOLE_APP}/workflows/draft",
                {"Authorization": "Bearer console-session-ops"}, None, f"account:{ACCOUNT}",
                CONSOLE_APP),
    # Service API without `user`: Dify logs in the workspace owner; the key names the app.
    "no_end_user": ("GET", "/v1/parameters", {"Authorization": "Bearer app-k3yChat"}, None,
                    f"account:{OWNER}", CHAT),
    "web_app": ("POST", "/api/chat-messages", {"Authorization": "Bearer passport-web-1",
                                               "X-App-Code": "Hq3kW9"},
                {"query": "hi", "response_mode": "blocking"}, f"end_user:{WEB_SESSION}", WEB_APP),
    "unauthenticated": ("POST", "/v1/chat-messages?k=bad", {"Authorization": "Bearer app-nope"},
                        {"query": "hi", "user": "mallory"}, "", ""),
    "stock_dify": ("POST", "/v1/chat-messages?k=stock", {"Authorization": "Bearer app-k3yChat",
                                                         STOCK_HEADER: "1"},
                   {"query": "hi", "user": "alice@example.com"}, "", ""),
}
# What Dify's own request-log line names (its ids; nobody for a web-app passport or a 401).
DIFY_LOGGED_USER = {
    "service_api_post": EndUser("alice@example.com", CHAT).id,
    "service_api_get": EndUser("bob", FLOW).id,
    "console": ACCOUNT, "no_end_user": OWNER, "web_app": None, "unauthenticated": None,
    "stock_dify": EndUser("alice@example.com", CHAT).id,
}
IDENTIFIED = ("service_api_post", "service_api_get", "console", "no_end_user", "web_app")


def send(base: str, method: str, path: str, headers: dict[str, str],
         body: dict[str, Any] | None) -> tuple[int, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={
        **headers, **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return resp.status, dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, dict(exc.headers.items())


class Chain:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[ManagedProcess] = []
        (workdir / "api").mkdir()
        self.app_log = workdir / "api" / "dify-api.json.log"
        self.api = DifyApiDouble(app_log=self.app_log).__enter__()
        self.nginx: DifyNginx | None = None
        self.jaeger: JaegerClient | None = None
        self.answers: dict[str, tuple[int, dict[str, str]]] = {}

    def start(self) -> None:
        wd = self.workdir
        jaeger, ports = start_jaeger(wd / "jaeger")
        self.procs.append(jaeger)
        self.jaeger = JaegerClient(ports.query_url)
        loop = f"127.0.0.1:{self.api.port}"
        self.nginx = render_dify_nginx(merged_model(), wd / "nginx", free_port(), dict.fromkeys(
            ("api", "web", "plugin_daemon", "api_websocket"), loop))
        processor_port = free_port()
        collector, _ = start_collector(
            wd / "collector", access_log=self.nginx.access_log,
            nginx_error_log=self.nginx.error_log, app_log=self.app_log,
            processor_endpoint=f"127.0.0.1:{processor_port}",
            traces_endpoint=ports.otlp_endpoint, vts_target=f"127.0.0.1:{free_port()}")
        self.procs.append(collector)
        processor = ManagedProcess(
            "processor", [sys.executable, "-m", "audit_guard.cli", "serve"], log_dir=wd,
            env={"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{processor_port}",
                 "AUDIT_GUARD_EXPORTER__ENDPOINT": ports.otlp_endpoint,
                 "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}"}).start()
        self.procs.append(processor)
        processor.wait_ready(lambda: port_open(processor_port), timeout=60)
        nginx = ManagedProcess("nginx", self.nginx.argv(), log_dir=wd).start()
        self.procs.append(nginx)
        port = self.nginx.port
        nginx.wait_ready(lambda: port_open(port), timeout=30)
        for name, (method, path, headers, body, _, _) in REQUESTS.items():
            self.answers[name] = send(f"http://127.0.0.1:{port}", method, path, headers, body)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.api.__exit__()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    c = Chain(tmp_path_factory.mktemp("dify"))
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def logged(chain: Chain) -> dict[str, dict[str, Any]]:
    """name → nginx's JSON access-log line."""
    assert chain.nginx is not None
    log = chain.nginx.access_log

    def lines() -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in log.read_bytes().splitlines() if x.strip()]

    wait_until(lambda: log.exists() and len(lines()) >= len(REQUESTS), 30, "nginx's audit log")
    by_uri = {line["request_uri"]: line for line in lines()}
    return {name: by_uri[req[1]] for name, req in REQUESTS.items()}


def nginx_span(chain: Chain, request_id: str) -> dict[str, Any]:
    assert chain.jaeger is not None
    (span,) = chain.jaeger.wait_for_spans(
        lambda s: s["process"]["serviceName"] == "nginx", timeout=60, trace_id=request_id)
    return span


def flags(span: dict[str, Any]) -> set[str]:
    return set(orjson.loads(span_tags(span).get("audit.flags", "[]")))


@pytest.mark.parametrize("name", list(REQUESTS))
def test_nginx_logs_the_identity_dify_reported(
    name: str, logged: dict[str, dict[str, Any]]
) -> None:
    _, _, _, _, user_id, app_id = REQUESTS[name]
    assert (logged[name]["user_id"], logged[name]["app_id"]) == (user_id, app_id)


@pytest.mark.parametrize("name", IDENTIFIED)
def test_identified_requests_reach_the_trace_backend_with_user_and_app(
    name: str, chain: Chain, logged: dict[str, dict[str, Any]]
) -> None:
    span = nginx_span(chain, logged[name]["request_id"])
    tags = span_tags(span)
    assert tags["user.id"] == REQUESTS[name][4] and tags["app.id"] == REQUESTS[name][5]
    assert not {f for f in flags(span) if f.startswith(("missing_field:", "invalid_field:"))}


def test_what_dify_cannot_tell_is_flagged_not_invented(
    chain: Chain, logged: dict[str, dict[str, Any]]
) -> None:
    # Controls: the same request to a stock Dify, and one nobody authenticated.
    for name in ("stock_dify", "unauthenticated"):
        span = nginx_span(chain, logged[name]["request_id"])
        assert "user.id" not in span_tags(span)
        assert {"missing_field:user_id", "missing_field:app_id"} <= flags(span), name


def test_the_client_never_sees_the_identity_headers(chain: Chain) -> None:
    for name, (status, headers) in chain.answers.items():
        assert status == (401 if name == "unauthenticated" else 200), name
        assert not {h.lower() for h in headers} & {"x-audit-user-id", "x-audit-app-id"}, name


def test_dify_gets_nginx_s_trace_context(
    chain: Chain, logged: dict[str, dict[str, Any]]
) -> None:
    seen = {path: headers for _, path, headers in chain.api.seen}
    for name, line in logged.items():
        headers = {k.lower(): v for k, v in seen[REQUESTS[name][1]].items()}
        rid = line["request_id"]
        assert headers["x-request-id"] == rid
        assert headers["traceparent"] == f"00-{rid}-{rid[:16]}-01"
        # Dify's own proxy.conf headers are still sent (the include did not drop them).
        assert headers["x-forwarded-proto"] == "http" and "x-forwarded-for" in headers


@pytest.mark.parametrize("name", list(REQUESTS))
def test_difys_own_request_log_joins_the_trace(
    name: str, chain: Chain, logged: dict[str, dict[str, Any]]
) -> None:
    assert chain.jaeger is not None
    rid = logged[name]["request_id"]
    spans = chain.jaeger.wait_for_spans(lambda s: True, timeout=60, trace_id=rid, min_count=2)
    (app,) = [s for s in spans if s["process"]["serviceName"] == "app"]
    assert [r["spanID"] for r in app.get("references", [])] == [rid[:16]]
    assert span_tags(app).get("user.id") == DIFY_LOGGED_USER[name]
    # Dify's log names no app: its records on audited paths say so.
    assert "missing_field:app_id" in flags(app)
    assert not any("missing_record" in flags(s) for s in spans)
