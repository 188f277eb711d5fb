"""End to end through the real programs on loopback:
demo upstream ← real nginx → access log → real collector → audit-guard → collector → real Jaeger.
Assertions go through Jaeger's HTTP API, as an operator would look.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import orjson
import pytest

from demo.backends import span_tags
from demo.procs import repo_root, wait_until
from demo.stack import Stack
from demo.traffic import DemoRequest, send

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REQUESTS = {
    "clean": DemoRequest("POST", "/v1/chat-messages", user="u1", app="a1", body={"query": "hi"}),
    "dataset": DemoRequest("GET", "/v1/datasets/ds-7/documents", user="u2", app="a2"),
    "forbidden": DemoRequest("GET", "/v1/datasets/ds-9/documents?status=403", user="u3"),
    "error": DemoRequest("POST", "/v1/completion-messages?status=502", body={"inputs": {}}),
    "cut": DemoRequest("GET", "/v1/datasets/ds-1/documents/doc-2?cut=1", user="u4"),
    "anonymous": DemoRequest("POST", "/v1/chat-messages?anonymous=1", body={"query": "?"}),
    "model_config": DemoRequest("PUT", "/v1/model-configs", user="admin",
                                body={"model": "gpt-x"}),
    # Dify's streamed answers (SSE): one cut by the upstream, one whole
    "sse_cut": DemoRequest("POST", "/v1/chat-messages?cut=1", user="u5",
                           body={"query": "hi", "response_mode": "streaming"}),
    "sse_whole": DemoRequest("POST", "/v1/chat-messages?stream=whole", user="u6",
                             body={"query": "hi", "response_mode": "streaming"}),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="module")
def traced(stack):
    """Send each request once; return {name: (access-log line, Jaeger span)}."""
    for req in REQUESTS.values():
        send(stack.base_url, req)
    abort_download(stack.nginx_port, ABORT_PATH)
    access_log = stack.nginx_paths.access_log

    def lines() -> list[dict]:
        return [orjson.loads(x) for x in access_log.read_bytes().splitlines() if x.strip()]

    wait_until(lambda: len(lines()) >= len(REQUESTS) + 1, 30, "nginx to log every request")
    by_uri = {line["request_uri"].split("&user=")[0].split("?user=")[0]: line for line in lines()}
    out = {}
    paths = {name: req.path for name, req in REQUESTS.items()} | {"abort": ABORT_PATH}
    for name, path in paths.items():
        line = by_uri[path]
        rid = line["request_id"]
        # the nginx span and the app's audit record (the demo upstream logs every request)
        spans = stack.jaeger.wait_for_spans(lambda s: True, timeout=60, trace_id=rid, min_count=2)
        out[name] = (line, spans)
    return out


ABORT_PATH = "/v1/datasets/ds-2/documents?size=5000000"


def abort_download(port: int, path: str) -> None:
    """A client that resets the connection mid-download (a closed tab, a timed-out client)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path}&user=u7 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Authorization: Bearer app-a1\r\n\r\n".encode())
        received = 0
        while received < 16_384:
            chunk = sock.recv(4096)
            assert chunk, "nginx closed before the abort"
            received += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _service_spans(traced, name: str, service: str) -> list[dict]:
    """The spans of one source's records (error-log evidence may add nginx child spans)."""
    return [s for s in traced[name][1] if s["process"]["serviceName"] == service
            and span_tags(s).get("audit.source") == service]


def _only_span(traced, name: str) -> dict:
    spans = _service_spans(traced, name, "nginx")
    assert len(spans) == 1, f"{name}: expected one nginx span per request, got {len(spans)}"
    return spans[0]


def test_every_request_is_one_span_whose_trace_id_is_nginx_request_id(stack, traced) -> None:
    for name, (line, _) in traced.items():
        span = _only_span(traced, name)
        assert span["traceID"] == line["request_id"], name
        # the nginx snippet's traceparent names this span as the app's parent
        assert span["spanID"] == line["request_id"][:16], name
        assert not span.get("references"), name  # the root of the request's trace
    # nothing else arrived: one nginx and one app span per request, no duplicates, no strays
    total = [s for t in stack.jaeger.find_traces("nginx", limit=1000)
             for s in stack.jaeger.spans_of(t)]
    sources = [span_tags(s).get("audit.source") for s in total]
    assert sources.count("nginx") == sources.count("app") == len(REQUESTS) + 1  # + the abort


def test_app_record_is_the_child_of_the_nginx_span(traced) -> None:
    for name, (line, _) in traced.items():
        (app_span,) = _service_spans(traced, name, "app")
        assert app_span["traceID"] == line["request_id"], name
        assert [(r["refType"], r["spanID"]) for r in app_span["references"]] == [
            ("CHILD_OF", line["request_id"][:16])], name
        tags = span_tags(app_span)
        assert tags["audit.source"] == "app"
    clean = span_tags(_service_spans(traced, "clean", "app")[0])
    assert (clean["user.id"], clean["app.id"]) == ("u1", "a1")
    assert clean["http.request.method"] == "POST" and clean["url.path"] == "/v1/chat-messages"


def test_span_attributes_follow_http_conventions(traced) -> None:
    span = _only_span(traced, "clean")
    tags = span_tags(span)
    assert span["operationName"] == "POST /v1/chat-messages"
    assert tags["span.kind"] == "server"
    assert tags["http.request.method"] == "POST"
    assert tags["url.path"] == "/v1/chat-messages"
    assert tags["http.route"] == "/v1/chat-messages"
    assert tags["http.response.status_code"] == 200
    assert tags["client.address"] == "127.0.0.1"
    assert (tags["user.id"], tags["app.id"]) == ("u1", "a1")
    assert tags["audit.valid"] is True
    assert "audit.flags" not in tags and "audit.truncated" not in tags

    dataset = span_tags(_only_span(traced, "dataset"))
    assert dataset["http.route"] == "/v1/datasets/{dataset_id}/documents"
    assert (dataset["user.id"], dataset["app.id"]) == ("u2", "a2")


def test_cut_stream_is_flagged_from_the_error_log(stack, traced) -> None:
    """A streamed answer cut by the upstream is logged 200/OK; only nginx's error log tells.
    audit-guard joins the error-log event to the request: the request's trace carries
    truncated:upstream_closed (on the nginx span, or on a child span when the error line came
    after the access line); an uncut stream carries nothing of the kind."""
    line, _ = traced["sse_cut"]
    assert (line["status"], line["request_completion"], line["sent_http_content_length"]) == (
        "200", "OK", "")
    rid = line["request_id"]

    def cut_flag(span: dict) -> bool:
        tags = span_tags(span)
        return "truncated:upstream_closed" in orjson.loads(tags.get("audit.flags", "[]"))

    flagged = stack.jaeger.wait_for_spans(cut_flag, timeout=60, trace_id=rid)
    assert all(s["traceID"] == rid for s in flagged)
    assert any("nginx.error" in span_tags(s) for s in flagged)
    # the error-log line is a span event (Jaeger: a log of the span)
    events = [f["value"] for s in flagged for log in s.get("logs") or []
              for f in log["fields"] if f["key"] == "event"]
    assert "nginx error: upstream_closed" in events
    whole = stack.jaeger.trace(traced["sse_whole"][0]["request_id"])
    assert whole and not [s for s in stack.jaeger.spans_of(whole) if cut_flag(s)]


def test_client_abort_is_flagged(traced) -> None:
    line, _ = traced["abort"]
    # nginx keeps the upstream's 200; only $request_completion (empty) and the info-level
    # error-log line show the client went away mid-download
    assert (line["status"], line["request_completion"]) == ("200", "")
    tags = span_tags(_only_span(traced, "abort"))
    assert "truncated:request_incomplete" in orjson.loads(tags["audit.flags"])


def test_builtin_rules_flag_the_seed_scenarios(traced) -> None:
    """403 on a dataset and a model-configuration change, end to end, on the nginx spans."""
    for name, rule in (("forbidden", "dataset_access_denied"),
                       ("model_config", "model_config_change"),
                       ("anonymous", "unknown_user"),
                       ("error", "server_error_on_audited_path")):
        tags = span_tags(_only_span(traced, name))
        assert f"rule:{rule}" in orjson.loads(tags["audit.flags"]), name
        assert rule in orjson.loads(tags["audit.rules"]), name
    clean = span_tags(_only_span(traced, "clean"))
    assert "audit.rules" not in clean


def test_4xx_is_not_an_error_5xx_is(traced) -> None:
    forbidden = span_tags(_only_span(traced, "forbidden"))
    assert forbidden["http.response.status_code"] == 403
    assert "error.type" not in forbidden and forbidden.get("otel.status_code") != "ERROR"
    error = span_tags(_only_span(traced, "error"))
    assert error["http.response.status_code"] == 502
    assert error["error.type"] == "502" and error["otel.status_code"] == "ERROR"


def test_cut_response_is_flagged(traced) -> None:
    line, _ = traced["cut"]
    # nginx itself says 200 / OK: the access log alone looks fine
    assert (line["status"], line["request_completion"]) == ("200", "OK")
    tags = span_tags(_only_span(traced, "cut"))
    assert tags["audit.truncated"] is True
    assert "response_short" in tags["audit.truncation.reason"].split(",")
    # Jaeger shows string-array attributes as a JSON-encoded string
    assert "truncated:response_short" in orjson.loads(tags["audit.flags"])


def test_request_without_user_is_flagged_invalid(traced) -> None:
    tags = span_tags(_only_span(traced, "anonymous"))
    assert tags["audit.valid"] is False
    assert orjson.loads(tags["audit.violations"]) == ["missing_field:user_id"]
    assert "user.id" not in tags


def test_demo_once_smoke() -> None:
    """`make demo ARGS=--once`: the newcomer's main command works and finds what it should."""
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--once", "--requests", "18"],
        cwd=repo_root(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result             OK" in proc.stdout
    assert "spans in Jaeger    18" in proc.stdout


def test_replay_of_the_real_access_log_matches_jaeger(stack, traced) -> None:
    """`audit-guard replay access.log error.log` finds offline what the service put on the
    nginx spans (when the error line came before the access line, as nginx writes them)."""
    proc = subprocess.run(
        [sys.executable, "-m", "audit_guard.cli", "replay", str(stack.nginx_paths.access_log),
         str(stack.nginx_paths.error_log)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stderr  # the cut and the anonymous requests are flagged
    by_trace = {o["trace_id"]: o for o in map(orjson.loads, proc.stdout.splitlines())
                if o["source"] == "nginx"}
    for name, (line, _) in traced.items():
        span = _only_span(traced, name)
        replayed = by_trace[line["request_id"]]
        assert replayed["span_id"] == span["spanID"], name
        # The service flags the nginx span, or — when the error line reached it after the
        # access line — a child span of it: compare with all nginx spans of the trace.
        trace = stack.jaeger.trace(line["request_id"])
        in_trace = set()
        for s in stack.jaeger.spans_of(trace):
            tags = span_tags(s)
            if s["process"]["serviceName"] == "nginx" and "audit.flags" in tags:
                in_trace |= set(orjson.loads(tags["audit.flags"]))
        assert set(replayed["flags"]) == in_trace, name
