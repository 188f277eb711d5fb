"""The per-request audit view (GET /requests/{trace_id}, GET /api/requests/{trace_id}), in
process: records through the real pipeline, their BatchStats into AdminState, the view over
FastAPI's TestClient. Chromium and the real `serve` process: tests/e2e/test_admin_view_e2e.py."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from audit_guard import flags
from audit_guard.admin import AdminState, create_app
from audit_guard.admin.window import (
    MAX_TEXT_CHARS,
    kept_dict,
    kept_form,
    kept_records,
    kept_top,
    view_entry,
)
from audit_guard.config import ConfigError, load_settings
from audit_guard.correlate.missing import Due, missing_spans_batch
from audit_guard.flagged import EVIDENCE_FIELDS, flagged_records, flagged_rows
from audit_guard.pipeline import Pipeline
from audit_guard.record import RecordBatch
from audit_guard.sources.nginx_access import AUDIT_JSON_KEYS
from audit_guard.telemetry import BatchStats
from tests.support.otlp_doubles import logs_request

T = 1764165600  # 2025-11-26 14:00:00 UTC
NOW = (T + 3) * 10**9
CUT = "4bf92f3577b34da6a3ce929d0e0e4736"
DENIED = "0af7651916cd43dd8448eb211c80319c"
MISSING = "5b8aa5a2d2c872e8321cf37308d69df2"
TOKEN = "view-token-0123456789"
TRACE_UI = "http://127.0.0.1:16686/trace/{trace_id}"


def access(rid: str, **extra: object) -> str:
    return orjson.dumps({
        "msec": f"{T + 2}.500", "request_id": rid, "connection": 7, "connection_requests": 1,
        "request_method": "POST", "request_uri": "/v1/chat-messages", "status": "200",
        "request_completion": "OK", "user_id": "u1", "app_id": "a1", "body_bytes_sent": 812,
        "sent_http_content_length": "", "upstream_status": "200", **extra}).decode()


ERROR = ("2025/11/26 14:00:02 [error] 811#811: *7 upstream prematurely closed connection "
         "while reading upstream, client: 127.0.0.1, server: demo, "
         'request: "POST /v1/chat-messages HTTP/1.1", upstream: '
         '"http://127.0.0.1:8000/v1/chat-messages", host: "127.0.0.1:8080"')


def app_line(rid: str, path: str, status: int) -> str:
    """A request-log line as Dify writes it (LOG_OUTPUT_FORMAT=json, ENABLE_REQUEST_LOGGING)."""
    return orjson.dumps({
        "ts": "2025-11-26T14:00:02.400Z", "severity": "INFO", "service": "api",
        "caller": "ext_request_logging.py:52", "message": f"DELETE {path} {status} 3.1 {rid}",
        "trace_id": rid, "span_id": "00f067aa0ba902b7", "identity": {"user_id": "u9"},
        "attributes": {"app_id": "a1"},
    }).decode()


def feed(pipeline: Pipeline, state: AdminState, source: str, *bodies: str) -> None:
    stats = BatchStats()
    pipeline.process_logs(logs_request(*bodies, source=source), NOW, stats)
    state.record(stats)


def feed_missing(state: AdminState, trace_hex: str) -> None:
    """What audit_guard.completeness.report_missing hands the admin state."""
    due = Due(bytes.fromhex(trace_hex), bytes.fromhex(trace_hex[:16]), (T + 1) * 10**9, 200,
              "GET", "/v1/datasets/ds-5/documents")
    stats = BatchStats()
    stats.add_batch(missing_spans_batch([due], 5.0))
    state.record(stats)


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(load_settings())


@pytest.fixture
def state(pipeline: Pipeline) -> AdminState:
    st = AdminState()
    feed(pipeline, st, "nginx_error", ERROR)  # the cut stream: error line first, then access
    feed(pipeline, st, "nginx_access", access(CUT))
    path = "/v1/datasets/ds-1"
    feed(pipeline, st, "nginx_access", access(DENIED, request_method="DELETE",
                                               request_uri=path, status="403", connection=8))
    feed(pipeline, st, "app", app_line(DENIED, path, 403))
    feed_missing(st, MISSING)
    return st


def client_for(state: AdminState, pipeline: Pipeline, **kwargs: object) -> TestClient:
    return TestClient(create_app(state, pipeline.rules, token=TOKEN, **kwargs),  # type: ignore[arg-type]
                      raise_server_exceptions=False)


@pytest.fixture
def client(state: AdminState, pipeline: Pipeline) -> TestClient:
    return client_for(state, pipeline, trace_url=TRACE_UI)


def test_cut_stream_shows_the_error_log_evidence(client) -> None:
    view = client.get(f"/api/requests/{CUT}").json()
    assert (view["user_id"], view["method"], view["path"], view["status"]) == (
        "u1", "POST", "/v1/chat-messages", 200)
    assert view["trace_url"] == TRACE_UI.replace("{trace_id}", CUT)
    (flag,) = view["flags"]
    assert flag["flag"] == "truncated:upstream_closed" and flag["source"] == "nginx"
    assert flag["evidence"]["nginx.error"].startswith("upstream prematurely closed")
    assert flag["evidence"]["body_bytes_sent"] == 812 and flag["evidence"]["connection"] == 7
    (rec,) = view["records"]
    (event,) = rec["events"]
    assert event["name"] == "nginx error: upstream_closed"
    assert event["time_unix_nano"] == (T + 2) * 10**9
    assert rec["log_fields"]["request_completion"] == "OK"
    assert "user_id" not in rec["log_fields"]  # only the evidence fields of the log line
    page = client.get(f"/requests/{CUT}").text
    assert "Error-log evidence" in page and "upstream prematurely closed connection" in page
    assert f'href="{TRACE_UI.replace("{trace_id}", CUT)}"' in page


def test_rule_hit_on_nginx_and_app_records(client) -> None:
    view = client.get(f"/api/requests/{DENIED}").json()
    assert view["sources_kept"] == ["nginx", "app"]
    hits = [f for f in view["flags"] if f["flag"] == "rule:dataset_access_denied"]
    assert [f["source"] for f in hits] == ["nginx", "app"]
    assert "(medium)" in hits[0]["meaning"] and "refused with 403" in hits[0]["meaning"]
    assert hits[0]["evidence"]["when"].startswith("status == `403`")
    assert hits[0]["evidence"]["status"] == 403
    assert view["user_id"] == "u1"  # who, from the nginx record
    assert [r["user_id"] for r in view["records"]] == ["u1", "u9"]
    page = client.get(f"/requests/{DENIED}").text
    assert "app audit record" in page and "nginx access record" in page


def test_missing_app_record_is_a_marker(client) -> None:
    view = client.get(f"/api/requests/{MISSING}").json()
    assert view["missing"] == ["app"]
    (rec,) = view["records"]
    assert rec["missing"] is True and rec["flags"] == [flags.MISSING_RECORD]
    (flag,) = view["flags"]
    assert flag["evidence"]["audit.reconcile.window_s"] == 5.0
    assert flag["evidence"]["path"] == "/v1/datasets/ds-5/documents"
    assert "within reconcile.window_s" in flag["meaning"]
    assert 'class="record missing"' in client.get(f"/requests/{MISSING}").text


def test_unknown_trace_is_a_clear_404(client) -> None:
    other = "f" * 32
    api = client.get(f"/api/requests/{other}")
    assert api.status_code == 404
    assert "not in audit-guard's recent window" in api.json()["error"]
    page = client.get(f"/requests/{other}")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "admin.requests_kept" in page.text
    assert client.get(f"/requests/{CUT.upper()}").status_code == 200  # hex in either case
    bad = client.get("/requests/not-a-trace-id")
    assert bad.status_code == 422 and "trace_id" in bad.json()["details"][0]


def test_read_token_covers_the_view(state, pipeline) -> None:
    client = client_for(state, pipeline, read_token_required=True)
    for url in (f"/requests/{CUT}", f"/api/requests/{CUT}"):
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_attacker_text_is_escaped(pipeline) -> None:
    state = AdminState()
    evil = '/v1/x"><script>alert(1)</script>'
    feed(pipeline, state, "nginx_access", access(
        CUT, request_uri=evil, status="401", user_id='"><img src=x onerror=alert(2)>',
        upstream_status="<b>502</b>"))
    client = client_for(state, pipeline, trace_url=TRACE_UI)
    page = client.get(f"/requests/{CUT}").text
    assert "<script>alert" not in page and "<img" not in page and "<b>502" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x" in page
    assert "<script" not in page.lower()  # the view has no script of its own either
    status = client.get("/").text
    assert f'<a href="/requests/{CUT}">{CUT}</a>' in status


def test_status_page_links_each_trace(client, state, pipeline) -> None:
    page = client.get("/").text
    ui = TRACE_UI.replace("{trace_id}", CUT)
    assert f'<a href="/requests/{CUT}">{CUT}</a> <a class="ui" href="{ui}">trace UI</a>' in page
    assert f'data-trace-url="{TRACE_UI}"' in page
    plain = client_for(state, pipeline).get("/").text
    assert f'<a href="/requests/{CUT}">' in plain and "trace UI</a>" not in plain
    assert "data-trace-url=" not in plain


def test_flags_api_is_unchanged(client) -> None:
    flagged = client.get("/api/flags").json()["flags"]
    assert {tuple(sorted(f)) for f in flagged} == {(
        "app_id", "flags", "method", "path", "received_unix_nano", "source", "span_id",
        "status", "time_unix_nano", "trace_id", "user_id")}


def test_window_is_bounded(pipeline) -> None:
    state = AdminState(requests_kept=2, records_per_request=2)
    for rid in ("a" * 32, "b" * 32, "c" * 32):
        feed(pipeline, state, "nginx_access", access(rid, status="401"))
    assert state.request("a" * 32) is None  # the least recently flagged went first
    assert state.request("b" * 32) and state.request("c" * 32)
    for status in ("401", "403", "429"):
        feed(pipeline, state, "nginx_access", access("b" * 32, status=status))
    kept = state.request("b" * 32)
    assert kept is not None and [e["status"] for e in kept] == [403, 429]  # the last N
    assert state.request("c" * 32) is not None  # b was flagged again: c is older, still kept


def test_text_is_cut_per_record() -> None:
    batch = RecordBatch("pgaudit", 1, trace_id=[bytes.fromhex(CUT)], span_id=[b"\1" * 8],
                        attributes=[{"db.query.text": "SELECT " + "x" * 50_000,
                                     "db.system.name": "postgresql"}],
                        fields=[{"upstream_status": "y" * 50_000, "user_id": "secret-id"}])
    batch.flags[0] = ["rule:ddl"]
    (flagged,) = flagged_records(batch, [0])
    entry = view_entry(kept_form(flagged, 1))
    text = sum(len(v) for part in (entry["attributes"], entry["log_fields"])
               for v in part.values() if isinstance(v, str))
    assert entry["clipped"] is True and text <= MAX_TEXT_CHARS + 2
    assert "user_id" not in entry["log_fields"]


def test_redacted_identity_stays_redacted(pipeline) -> None:
    masked = Pipeline(load_settings(redaction={"fields": {"user_id": "mask"}}))
    state = AdminState()
    feed(masked, state, "nginx_access", access(CUT, status="401", user_id="alice@example.com"))
    body = client_for(state, masked).get(f"/api/requests/{CUT}").text
    assert "alice" not in body and '"user_id":"***"' in body


def test_trace_url_must_be_http_with_the_placeholder() -> None:
    assert load_settings(admin={"trace_url": TRACE_UI}).admin.trace_url == TRACE_UI
    for bad in ("javascript:alert(1)//{trace_id}", "http://jaeger/trace/", "ftp://x/{trace_id}"):
        with pytest.raises(ConfigError, match="admin.trace_url"):
            load_settings(admin={"trace_url": bad})


def test_flagged_records_from_columns_equal_those_from_rows(pipeline) -> None:
    """The shipped format's evidence is read from its decoded columns, other rows one by one:
    both give the same kept records, with only the evidence of the log fields (plus the written
    value of a field flagged invalid) and no row of log fields."""
    def shipped(i: int, **extra: object) -> str:  # every key of the shipped log format
        line = orjson.loads(access(f"{i:032x}", status="401", **extra))
        return orjson.dumps({**dict.fromkeys(AUDIT_JSON_KEYS, ""), **line}).decode()

    lines = [shipped(i, connection=i, upstream_status=f"{500 + i}", bytes_sent=900 + i,
                     request_time=0.01, server_protocol="HTTP/1.1") for i in range(30)]
    lines[4] = shipped(4, body_bytes_sent="lots")  # invalid_field:body_bytes_sent
    lines[7] = shipped(7, upstream_status=None)  # no value
    (batch,) = pipeline.records_from_logs(logs_request(*lines))
    assert type(batch.fields).__name__ == "AuditJsonRows"
    rows = [0, 4, 7, 29]
    from_columns = flagged_records(batch, rows)
    batch.fields = [batch.fields[i].to_dict() for i in range(len(batch))]
    assert flagged_records(batch, rows) == from_columns
    assert flagged_records(batch, [7]) == [from_columns[2]]  # one row alone
    first, invalid, absent, last = (f["detail"]["log_fields"] for f in from_columns)
    assert "fields" not in from_columns[0]["detail"]
    assert set(first) <= set(EVIDENCE_FIELDS) and "user_id" not in first
    assert (first["connection"], first["upstream_status"], first["bytes_sent"]) == (0, "500", 900)
    assert last["server_protocol"] == "HTTP/1.1" and last["connection"] == 29
    assert invalid["body_bytes_sent"] == "lots"  # the evidence of invalid_field:body_bytes_sent
    assert "invalid_field:body_bytes_sent" in from_columns[1]["flags"]
    assert "upstream_status" not in absent  # null: not a value to show
    assert [f["trace_id"] for f in from_columns] == [batch.trace_id[i].hex() for i in rows]


def test_kept_rows_read_as_the_records_they_stand_for(pipeline) -> None:
    """The admin keeps a flagged record as its row (made into dicts when the API is read); what
    it reads is what the record's dicts would have been. Where a record's text may be too long
    (or an invalid field's value is kept), each is kept as a dict, cut as needed."""
    plain = [access(f"{i:032x}", status="401", connection=i) for i in range(12)]
    invalid, long_agent = list(plain), list(plain)
    invalid[5] = access(f"{5:032x}", status="401", body_bytes_sent="lots")
    long_agent[3] = access(f"{3:032x}", status="401", http_user_agent="m" * 5000)
    for lines, as_rows, clipped in ((plain, True, None), (invalid, False, None),
                                    (long_agent, False, 1)):
        (batch,) = pipeline.records_from_logs(logs_request(*lines))
        rows = [1, 3, 5, 11]
        block = flagged_rows(batch, rows)
        kept = kept_records(block, 5)
        expected = [kept_form(record, 5) for record in flagged_records(batch, rows)]
        assert [kept_dict(k) for k in kept] == expected
        assert [kept_top(k) for k in kept] == [
            {k: v for k, v in e.items() if k != "detail"} for e in expected]
        assert [k[0] is block for k in kept] == [as_rows] * 4
        assert [i for i, e in enumerate(expected) if e["detail"].get("clipped")] == (
            [clipped] if clipped is not None else [])
        if lines is invalid:
            assert expected[2]["detail"]["log_fields"]["body_bytes_sent"] == "lots"
        if as_rows:
            assert block.text_bound is not None and block.text_bound < MAX_TEXT_CHARS
