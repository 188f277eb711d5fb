"""The admin API and status page, in process (FastAPI's TestClient), plus the admin state."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import get_args

import pytest
from fastapi.testclient import TestClient

from audit_guard.admin import AdminState, create_app
from audit_guard.admin.app import RuleIn, health_of
from audit_guard.admin.server import AdminServer, bind_admin_socket
from audit_guard.admin.state import SourceStatus
from audit_guard.config import ConfigError, load_settings
from audit_guard.rules import RuleRegistry, RuleSet
from audit_guard.rules.ruleset import SEVERITIES
from audit_guard.telemetry import BatchStats

NOW = 1_764_165_600_000_000_000  # a fixed clock: 2025-11-26 14:00:00Z
S = 1_000_000_000
TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD_RULES = """
- name: teapot
  description: I'm a teapot
  when: status == `418`
  severity: low
- name: deletes
  when: method == 'DELETE'
  severity: high
  labels: {category: change}
"""
BROKEN_RULES = """
- name: fine
  when: status == `200`
  severity: info
- name: broken_rule
  when: status == `403` && starts_with(path, '/v1/'
  severity: medium
"""


def flagged(trace: str, *, source: str = "nginx", user: str | None = "u1",
            flags: tuple[str, ...] = ("rule:auth_failure",), status: int = 401) -> dict:
    """A flagged record as audit_guard.telemetry.flagged_record builds it."""
    return {"time_unix_nano": NOW - 2 * S, "source": source, "trace_id": trace,
            "span_id": "00f067aa0ba902b7", "flags": list(flags), "user_id": user,
            "app_id": "a1", "method": "GET", "path": "/v1/parameters", "status": status}


def stats(records: dict[str, int], flagged_records: list[dict] = (),  # type: ignore[assignment]
          lags: dict[str, list[float]] | None = None) -> BatchStats:
    return BatchStats(records=Counter(records), flagged=list(flagged_records),
                      lags_s=lags or {})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> AdminState:
    st = AdminState(flags_buffer=10, clock=clock)
    st.mark_receiver_started()
    st.record(stats({"nginx": 5}, [flagged("a" * 32)]), NOW - 30 * S)
    st.record(stats({"app": 4}, [flagged("b" * 32, source="app", user="u2",
                                         flags=("delayed",), status=200)],
                    lags={"app": [0.5, 1.5]}), NOW - 20 * S)
    st.record(stats({"nginx": 1}, [flagged("c" * 32, user="u2",
                                           flags=("missing_field:user_id",))]), NOW - 10 * S)
    return st


@pytest.fixture
def registry() -> RuleRegistry:
    return RuleRegistry()


def client_for(state: AdminState, registry: RuleRegistry, token: str | None = TOKEN,
               **kwargs: object) -> TestClient:
    app = create_app(state, registry, token=token, rules_files=[Path("/etc/ag/rules.yaml")],
                     include_builtin=True, **kwargs)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(state: AdminState, registry: RuleRegistry) -> TestClient:
    return client_for(state, registry)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def put_yaml(client: TestClient, text: str, token: str | None = TOKEN):  # noqa: ANN201
    headers = {"Content-Type": "application/yaml", **(bearer(token) if token else {})}
    return client.put("/api/rules", content=text, headers=headers)


# -- auth -----------------------------------------------------------------------------------------


def test_mutations_disabled_without_a_configured_token(state, registry) -> None:
    client = client_for(state, registry, token=None)
    before = registry.current
    resp = put_yaml(client, GOOD_RULES, token="anything")
    assert resp.status_code == 403
    assert "set admin.token to enable" in resp.json()["error"]
    assert registry.current is before


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic dTpw"},
                                     bearer(TOKEN + "x"),
                                     {"Authorization": "Bearer ünïcode".encode("latin-1")}])
def test_missing_or_wrong_token_is_401_with_a_challenge(client, registry, headers) -> None:
    before = registry.current
    resp = client.put("/api/rules", content=GOOD_RULES,
                      headers={"Content-Type": "application/yaml", **headers})
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json()["error"]
    assert registry.current is before


def test_right_token_replaces_the_set(client, registry) -> None:
    resp = put_yaml(client, GOOD_RULES)
    assert resp.status_code == 200, resp.text
    assert resp.json()["active"] == ["teapot", "deletes"]
    assert registry.current.names == ("teapot", "deletes")
    rules = client.get("/api/rules").json()["rules"]
    assert [r["name"] for r in rules] == ["teapot", "deletes"]
    assert rules[1] == {"name": "deletes", "description": "", "when": "method == 'DELETE'",
                        "severity": "high", "labels": {"category": "change"},
                        "source": "PUT /api/rules", "index": 2, "matches": 0, "errors": 0}


def test_read_only_endpoints_need_no_token(client) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/api/rules", "/api/flags", "/api/status",
                 "/"):
        assert client.get(path).status_code == 200, path


def test_evaluating_rules_needs_the_token_unless_opened(state, registry) -> None:
    """A 5 MB body of an expensive expression must not cost anyone's CPU (issue #13): the
    endpoint needs the token, refuses a long expression, and a large body before reading it."""
    client = client_for(state, registry)
    record = {"record": {"status": 401}}
    assert client.post("/api/rules/test", json=record).status_code == 401
    assert client.post("/api/rules/test", headers=AUTH, json=record).status_code == 200
    none = client_for(state, registry, token=None)
    refused = none.post("/api/rules/test", json=record)
    assert refused.status_code == 403 and "admin.token" in refused.json()["error"]
    opened = client_for(state, registry, token=None, rules_test_open=True)
    assert opened.post("/api/rules/test", json=record).status_code == 200
    long_rule = {"name": "slow", "severity": "low",
                 "when": "length(to_string(@)) > `0` && " * 200 + "`true`"}
    resp = client.post("/api/rules/test", headers=AUTH, json={**record, "rule": long_rule})
    assert resp.status_code == 422 and "4096" in str(resp.json()["details"])


def test_a_large_body_is_refused_before_it_is_read(state, registry) -> None:
    import time

    client = client_for(state, registry, max_body_bytes=64 * 1024)
    body = b'{"record": {"path": "' + b"x" * (5 * 1024 * 1024) + b'"}}'
    started = time.process_time()
    resp = client.post("/api/rules/test", content=body, headers={
        **AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 413 and "admin.max_body_bytes" in resp.json()["error"]
    assert time.process_time() - started < 0.1

    def chunks():  # no Content-Length: refused as it streams in
        for _ in range(100):
            yield b"x" * 65536

    resp = client.put("/api/rules", content=chunks(), headers={**AUTH,
                                                               "Content-Type": "text/plain"})
    assert resp.status_code == 413


def test_the_host_header_must_be_one_the_port_expects(state, registry) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    client = client_for(state, registry, allowed_hosts=["localhost", "testserver"])
    assert client.get("/api/status").status_code == 200
    assert client.get("/api/status", headers={"Host": "evil.example"}).status_code == 400


def test_read_endpoints_can_require_the_token(state, registry) -> None:
    client = client_for(state, registry, read_token_required=True)
    for path in ("/api/flags", "/api/status", "/", "/api/rules"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=AUTH).status_code == 200, path
    for path in ("/healthz", "/metrics"):
        assert client.get(path).status_code == 200, path


# -- PUT /api/rules -------------------------------------------------------------------------------


def test_broken_set_is_refused_whole_naming_rule_and_position(client, registry) -> None:
    before = registry.current
    resp = put_yaml(client, BROKEN_RULES)
    assert resp.status_code == 422
    body = resp.json()
    assert "previous set stays active" in body["error"]
    detail = "\n".join(body["details"])
    assert "broken_rule" in detail and "rule #2" in detail
    assert "column" in detail or "position" in detail or "pos" in detail, detail
    assert registry.current is before  # the old set still runs
    assert "fine" not in registry.current.names


def test_refusal_quoting_a_lone_surrogate_is_still_json(client, registry) -> None:
    """JSON may carry a lone surrogate (found by schemathesis); the refusal quotes it escaped
    instead of failing to encode it (a 500)."""
    body = b'[{"name": "ok", "when": "status", "severity": "low", "\\ud800": 1}]'
    resp = client.put("/api/rules", content=body, headers={
        **bearer(TOKEN), "Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert "\\ud800" in "\n".join(resp.json()["details"])


def test_put_json_list_of_rules(client, registry) -> None:
    rules = [{"name": "teapot", "when": "status == `418`", "severity": "low"}]
    resp = client.put("/api/rules", json=rules, headers=bearer(TOKEN))
    assert resp.status_code == 200, resp.text
    assert registry.current.names == ("teapot",)
    bad = [{"name": "teapot", "when": "status ==", "severity": "urgent"}]
    resp = client.put("/api/rules", json=bad, headers=bearer(TOKEN))
    assert resp.status_code == 422
    assert any("rule #1" in d and "severity" in d for d in resp.json()["details"])
    resp = client.put("/api/rules", json=[{"name": "x", "when": "a", "severity": "low",
                                           "labels": None}], headers=bearer(TOKEN))
    assert resp.status_code == 422 and "labels" in resp.json()["details"][0]
    assert registry.current.names == ("teapot",)


@pytest.mark.parametrize(("content", "ctype", "status"), [
    (b"", "application/yaml", 422),  # an empty set must be written `[]`, never by accident
    (b"[]", "text/plain", 200),
    (b"{not json", "application/json", 422),
    (b'{"name": "x"}', "application/json", 422),
    (b"\xff\xfe", "application/yaml", 422),
    (b"- a", "application/xml", 415),
])
def test_put_bodies(client, content, ctype, status) -> None:
    resp = client.put("/api/rules", content=content,
                      headers={"Content-Type": ctype, **bearer(TOKEN)})
    assert resp.status_code == status, resp.text
    assert isinstance(resp.json(), dict)


def test_put_too_large(client) -> None:
    resp = put_yaml(client, "#" * (1024 * 1024 + 1))
    assert resp.status_code == 413 and "larger" in resp.json()["error"]


# -- POST /api/rules/test -------------------------------------------------------------------------


def test_rules_test_with_the_active_set(client, registry) -> None:
    resp = client.post("/api/rules/test", headers=AUTH, json={"record": {
        "status": 401, "path": "/v1/chat-messages", "method": "POST", "user_id": "u1",
        "trace_id": "ignored: copied from /api/flags"}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["matches"] == ["auth_failure"]
    assert body["active_set"] is True and body["evaluated"] == len(registry.current)
    assert body["elapsed_us"] >= 0
    assert registry.counts == Counter()  # a test is not traffic


def test_rules_test_with_one_rule(client) -> None:
    rule = {"name": "teapot", "when": "status == `418` && fields.brew == 'earl grey'",
            "severity": "low"}
    record = {"status": 418, "fields": {"brew": "earl grey"}}
    body = client.post("/api/rules/test", headers=AUTH,
                       json={"record": record, "rule": rule}).json()
    assert body["matches"] == ["teapot"] and body["evaluated"] == 1
    assert body["active_set"] is False
    record["status"] = 200
    assert client.post("/api/rules/test", headers=AUTH,
                       json={"record": record, "rule": rule}).json()["matches"] == []


def test_rules_test_reports_errors_and_bad_rules(client) -> None:
    raising = {"name": "raises", "when": "starts_with(status, '4')", "severity": "low"}
    body = client.post("/api/rules/test", headers=AUTH,
                       json={"record": {"status": 401}, "rule": raising}).json()
    assert body["matches"] == [] and body["errors"] == ["raises"]
    bad = {"name": "bad", "when": "status ==", "severity": "low"}
    resp = client.post("/api/rules/test", headers=AUTH, json={"record": {}, "rule": bad})
    assert resp.status_code == 422
    assert "bad" in "\n".join(resp.json()["details"])
    resp = client.post("/api/rules/test", headers=AUTH,
                       json={"record": {"status": "not a number"}})
    assert resp.status_code == 422
    assert any("record.status" in d for d in resp.json()["details"])


# -- GET /api/flags, /api/status ------------------------------------------------------------------


def traces(resp) -> list[str]:  # noqa: ANN001
    assert resp.status_code == 200, resp.text
    return [f["trace_id"][0] for f in resp.json()["flags"]]


def test_flags_newest_first_and_filters(client) -> None:
    assert traces(client.get("/api/flags")) == ["c", "b", "a"]
    assert traces(client.get("/api/flags?source=app")) == ["b"]
    assert traces(client.get("/api/flags?user=u2")) == ["c", "b"]
    assert traces(client.get("/api/flags?flag=rule")) == ["a"]
    assert traces(client.get("/api/flags?flag=rule:auth_failure")) == ["a"]
    assert traces(client.get("/api/flags?flag=missing_field")) == ["c"]
    assert traces(client.get("/api/flags?flag=delayed&user=u2")) == ["b"]
    assert traces(client.get("/api/flags?limit=2")) == ["c", "b"]
    since = (NOW - 25 * S) / S  # Unix seconds
    assert traces(client.get(f"/api/flags?since={since}")) == ["c", "b"]
    assert traces(client.get("/api/flags?since=1e30")) == []
    flag = client.get("/api/flags?limit=1").json()
    assert flag["buffer_size"] == 10
    assert flag["flags"][0]["received_unix_nano"] == NOW - 10 * S
    assert flag["flags"][0]["time_unix_nano"] == NOW - 2 * S
    for bad in ("limit=0", "limit=1001", "since=yesterday", "since=nan", "since=inf"):
        resp = client.get(f"/api/flags?{bad}")
        assert resp.status_code == 422 and resp.json()["error"] == "invalid request", bad


def test_flags_ring_buffer_is_bounded(state, client) -> None:
    state.record(stats({"nginx": 20}, [flagged(f"{i:032x}") for i in range(20)]), NOW)
    flags = client.get("/api/flags?limit=1000").json()["flags"]
    assert len(flags) == 10  # flags_buffer
    assert flags[0]["trace_id"] == f"{19:032x}"


def test_flags_ring_keeps_a_huge_value_cut(state, client) -> None:
    """The ring shares the audit view's kept form: a record's text is bounded there too (a
    thousand flagged 10 MB paths must not keep 10 GB), and the API shows no detail."""
    huge = flagged("d" * 32)
    huge["path"] = "/v1/" + "x" * 10_000_000
    state.record(stats({"nginx": 1}, [huge]), NOW)
    entry = client.get("/api/flags?limit=1").json()["flags"][0]
    assert entry["trace_id"] == "d" * 32
    assert entry["path"].startswith("/v1/xxx") and entry["path"].endswith("…")
    assert len(entry["path"]) <= 1025 and "detail" not in entry


def test_status_per_source(client, clock) -> None:
    body = client.get("/api/status").json()
    assert body["ready"]["ready"] is True
    by_name = {s["name"]: s for s in body["sources"]}
    assert set(by_name) == {"app", "nginx"}
    nginx, app = by_name["nginx"], by_name["app"]
    assert nginx["records_total"] == 6 and nginx["flagged_total"] == 2
    assert nginx["last_seen_unix_nano"] == NOW - 10 * S
    assert nginx["seconds_since_last_seen"] == pytest.approx(10)
    assert app["last_lag_s"] == 1.5 and app["avg_lag_s"] == pytest.approx(1.0)
    assert nginx["completeness"] is None and nginx["silent"] is None
    assert nginx["health"] == "amber"  # flagged within the last minute
    clock.now += 120 * S  # flags age out; no records for 2 min
    assert {s["health"] for s in client.get("/api/status").json()["sources"]} == {"amber"}
    clock.now += 300 * S
    assert {s["health"] for s in client.get("/api/status").json()["sources"]} == {"red"}


def test_health_colours() -> None:
    fresh = SourceStatus(records_total=1, last_seen_unix_nano=NOW - S)
    assert health_of(fresh, NOW, 5.0)[0] == "green"
    lagging = SourceStatus(records_total=1, last_seen_unix_nano=NOW - S, last_lag_s=9.0)
    assert health_of(lagging, NOW, 5.0) == ("amber", "ingest lag 9.0 s > 5 s")
    assert health_of(SourceStatus(records_total=1, last_seen_unix_nano=NOW - S,
                                  completeness=0.95), NOW, 5.0)[0] == "red"
    assert health_of(SourceStatus(records_total=1, last_seen_unix_nano=NOW - S,
                                  silent=True), NOW, 5.0)[0] == "red"
    assert health_of(SourceStatus(), NOW, 5.0)[0] == "red"


def test_rule_match_counts_are_shown(client, registry) -> None:
    # What RuleRegistry.evaluate does after a batch (the pipeline path), without building one.
    registry._count(registry.current, [["auth_failure"], ["auth_failure"]], Counter())
    rules = {r["name"]: r for r in client.get("/api/rules").json()["rules"]}
    assert rules["auth_failure"]["matches"] == 2
    assert rules["auth_failure"]["source"] == "builtin.yaml"
    body = client.get("/api/rules").json()
    assert body["rules_files"] == ["/etc/ag/rules.yaml"] and body["builtin_rules"] is True


# -- health, readiness, metrics -------------------------------------------------------------------


def test_healthz_and_readyz(clock) -> None:
    state = AdminState(clock=clock)
    client = client_for(state, RuleRegistry())
    assert client.get("/healthz").json() == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["error"] == "the OTLP receiver is not started"
    state.mark_receiver_started()
    assert client.get("/readyz").status_code == 200
    state.note_export(False, NOW)
    resp = client.get("/readyz")
    assert resp.status_code == 503 and "downstream failed" in resp.json()["reason"]
    state.note_export(True, NOW + 1)
    assert client.get("/readyz").json()["ready"] is True
    state.note_export(False, NOW + 2)
    assert client.get("/readyz").status_code == 503


def test_metrics_is_prometheus_text(client) -> None:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE" in resp.text


# -- errors are JSON ------------------------------------------------------------------------------


def test_errors_are_json(client) -> None:
    resp = client.get("/nope")
    assert resp.status_code == 404 and "no such endpoint: /nope" in resp.json()["error"]
    resp = client.delete("/api/rules")
    assert resp.status_code == 405 and "DELETE is not allowed" in resp.json()["error"]
    assert "GET" in resp.headers["allow"]
    resp = client.post("/api/rules/test", content=b"{", headers={**AUTH, "Content-Type":
                                                                 "application/json"})
    assert resp.status_code == 422 and resp.json()["error"] == "invalid request"
    resp = client.post("/api/rules/test", headers=AUTH, json={"record": {}, "extra": 1})
    assert resp.status_code == 422 and resp.json()["details"]


def test_openapi_documents_the_api(client) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/healthz", "/readyz", "/metrics", "/api/rules", "/api/rules/test",
                 "/api/flags", "/api/status", "/"):
        assert path in schema["paths"], path
    put = schema["paths"]["/api/rules"]["put"]
    assert put["summary"] and {"application/yaml", "application/json"} <= set(
        put["requestBody"]["content"])
    assert put["security"] == [{"HTTPBearer": []}]
    assert set(get_args(RuleIn.model_fields["severity"].annotation)) == set(SEVERITIES)


# -- status page ----------------------------------------------------------------------------------


def test_status_page_is_server_rendered(client, state) -> None:
    state.record(stats({"nginx": 1}, [flagged("d" * 32, user="<script>alert(1)</script>")]),
                 NOW - S)
    resp = client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    for trace in ("a" * 32, "b" * 32, "c" * 32, "d" * 32):
        assert trace in html
    assert '<tr class="amber"><td>nginx</td>' in html
    assert "<td>GET /v1/parameters 401</td>" in html and "rule:auth_failure" in html
    assert "<td>auth_failure</td>" in html  # the rules table
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # log text is escaped
    assert "<script>alert(1)" not in html
    assert "setInterval(refresh, 5000)" in html


def test_status_page_empty(clock) -> None:
    html = client_for(AdminState(clock=clock), RuleRegistry(RuleSet())).get("/").text
    assert "no records received yet" in html and "nothing flagged" in html
    assert "NOT READY" in html and "no rules active" in html


# -- state and config -----------------------------------------------------------------------------


def test_state_is_thread_safe(clock) -> None:
    state = AdminState(flags_buffer=100, clock=clock)

    def feed() -> None:
        for _ in range(200):
            state.record(stats({"nginx": 1}, [flagged("e" * 32)]))
            state.flags(limit=5)

    threads = [threading.Thread(target=feed) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state.sources()["nginx"].records_total == 1600
    assert len(state.flags(limit=1000)) == 100


def test_admin_config(monkeypatch) -> None:
    settings = load_settings()
    assert settings.admin.token is None and settings.admin.flags_buffer == 1000
    monkeypatch.setenv("AUDIT_GUARD_ADMIN__TOKEN", "t0k")
    with pytest.raises(ConfigError, match="admin.token"):  # at least 16 characters
        load_settings()
    monkeypatch.setenv("AUDIT_GUARD_ADMIN__TOKEN", "t0k-0123456789abcdef")
    monkeypatch.setenv("AUDIT_GUARD_ADMIN__FLAGS_BUFFER", "50")
    settings = load_settings()
    assert settings.admin.token == "t0k-0123456789abcdef" and settings.admin.flags_buffer == 50
    monkeypatch.setenv("AUDIT_GUARD_ADMIN__FLAGS_BUFFER", "5")
    with pytest.raises(ConfigError, match="admin.flags_buffer"):
        load_settings()


def test_admin_server_serves_on_the_bound_socket_and_a_taken_port_fails(state, registry) -> None:
    import urllib.request

    sock = bind_admin_socket("127.0.0.1:0")
    port = sock.getsockname()[1]
    with pytest.raises(OSError):
        bind_admin_socket(f"127.0.0.1:{port}")
    server = AdminServer(create_app(state, registry), sock).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.stop()


def test_the_worst_evaluation_the_limits_allow_stays_cheap(state, registry) -> None:
    """The longest expression of the costliest function over the largest sample record."""
    import time

    client = client_for(state, registry)
    expr = " && ".join(["length(to_string(@)) > `0`"] * 150)
    expr = expr[:expr.rfind(" &&", 0, 4096)]
    rule = {"name": "slow", "severity": "low", "when": expr}
    started = time.process_time()
    resp = client.post("/api/rules/test", headers=AUTH,
                       json={"record": {"path": "x" * 60_000}, "rule": rule})
    assert resp.status_code == 200 and time.process_time() - started < 0.5
    too_big = client.post("/api/rules/test", headers=AUTH,
                          json={"record": {"path": "x" * 70_000}, "rule": rule})
    assert too_big.status_code == 413 and "65536" in too_big.json()["error"]
