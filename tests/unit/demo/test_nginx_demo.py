"""The shipped nginx snippets, run in real nginx in front of the demo upstream (no mocks).

What is checked is what the processor relies on: every access-log line is one JSON object with
the documented keys and types; nginx's $request_id reaches the app as the W3C trace id (with the
span id derived as documented); the app's identity headers are logged but hidden from clients;
and a cut fixed-length response is visible in the access log (body_bytes_sent < Content-Length)
and in the error log under the same connection number.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_guard.sources.nginx_access import AUDIT_JSON_KEYS, AuditJsonLine, parse_lines
from demo.nginx import nginx_argv, render_nginx_conf
from demo.procs import free_port, wait_until
from demo.upstream import CUT_PROMISED, CUT_SENT
from tests.support.nginx_upstream import (
    NginxUpstream,
    nginx_with_upstream,
    read_json_lines,
    wait_for_lines,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
]

# The log_format's keys, and which ones are written as bare JSON numbers.
NUMBER_KEYS = {
    "msec",
    "connection",
    "connection_requests",
    "body_bytes_sent",
    "bytes_sent",
    "request_time",
}
STRING_KEYS = {
    "status",  # quoted: nginx prints %03d, "000" would not be a valid JSON number
    "time_iso8601",
    "request_id",
    "remote_addr",
    "request_method",
    "request_uri",
    "uri",
    "server_protocol",
    "host",
    "server_name",
    "request_completion",
    "sent_http_content_length",
    "sent_http_content_type",
    "upstream_status",
    "upstream_response_length",
    "upstream_bytes_received",
    "upstream_response_time",
    "upstream_addr",
    "http_user_agent",
    "http_traceparent",
    "user_id",
    "app_id",
}
HEX32 = re.compile(r"^[0-9a-f]{32}$")
CLIENT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    paths = render_nginx_conf(tmp_path, free_port(), free_port(), free_port())
    result = subprocess.run(
        [*nginx_argv(paths.conf), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # The shipped snippets are included by absolute path: they are what was tested.
    conf = paths.conf.read_text()
    assert "otel/nginx/audit_log_format.conf" in conf
    assert "otel/nginx/audit_location.conf" in conf


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[NginxUpstream]:
    with nginx_with_upstream(tmp_path) as s:
        yield s


def test_audit_log_through_real_nginx(stack: NginxUpstream) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        normal = client.post(
            "/v1/chat-messages",
            json={"query": "hi", "user": "u1", "response_mode": "blocking"},
            headers={"Authorization": "Bearer app-a1", "traceparent": CLIENT_TRACEPARENT},
        )
        assert normal.status_code == 200
        assert normal.json()["answer"] == "Echo: hi"
        # Identity headers are for nginx's log only.
        assert "x-audit-user-id" not in normal.headers
        assert "x-audit-app-id" not in normal.headers

        # The upstream promises 100000 bytes and closes after 30000: the client sees a short
        # body, which httpx reports as a protocol error.
        cut_body = b""
        with (
            pytest.raises(httpx.HTTPError),  # raised while reading, after the headers
            client.stream("GET", "/v1/datasets?cut=1") as resp,
        ):
            assert resp.status_code == 200
            assert resp.headers["content-length"] == str(CUT_PROMISED)
            for chunk in resp.iter_raw():
                cut_body += chunk
        assert len(cut_body) == CUT_SENT

        anonymous = client.get("/v1/parameters?anonymous=1&user=u2")
        assert anonymous.status_code == 200

        forbidden = client.delete("/v1/datasets/x/documents/d1?status=403")
        assert forbidden.status_code == 403
        assert forbidden.json()["status"] == 403

        stub = httpx.get(stack.status_url, timeout=5)
        assert stub.status_code == 200
        assert stub.text.startswith("Active connections:")

    lines = wait_for_lines(stack.paths.access_log, 4)
    assert len(lines) == 4, lines  # stub_status is not audited (access_log off)
    by_uri = {line["request_uri"]: line for line in lines}

    # The processor's fast path decodes exactly this key set (nginx_access.AuditJsonLine):
    # a change to audit_log_format.conf must be made there too, or its lines go the slow way.
    assert set(AUDIT_JSON_KEYS) == NUMBER_KEYS | STRING_KEYS
    raw = stack.paths.access_log.read_bytes().splitlines()
    fast = parse_lines(raw)
    assert all(isinstance(f, AuditJsonLine) for f in fast.fields)
    for line in lines:
        assert set(line) == NUMBER_KEYS | STRING_KEYS, set(line) ^ (NUMBER_KEYS | STRING_KEYS)
        for key in NUMBER_KEYS:
            assert isinstance(line[key], int | float) and not isinstance(line[key], bool), key
        for key in STRING_KEYS:
            assert isinstance(line[key], str), key
        assert HEX32.match(line["request_id"]), line["request_id"]
        assert line["server_name"] == "audit-guard-demo"
        assert line["upstream_addr"] == f"127.0.0.1:{stack.upstream.server_address[1]}"
        assert line["app_id"] == "demo" or line["request_uri"] == "/v1/chat-messages"

    # The app saw nginx's request id as trace id, and the documented parent span id.
    app_lines = read_json_lines(stack.app_log)
    app_by_trace = {app["trace_id"]: app for app in app_lines}
    assert len(app_by_trace) == 4
    for line in lines:
        rid = line["request_id"]
        app = app_by_trace[rid]
        assert app["attributes"]["traceparent"] == f"00-{rid}-{rid[:16]}-01"
        assert app["attributes"]["path"] == line["uri"]
        assert app["attributes"]["method"] == line["request_method"]
        assert set(app) >= {
            "ts",
            "severity",
            "service",
            "caller",
            "message",
            "trace_id",
            "span_id",
            "identity",
            "attributes",
        }
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", app["ts"])
        assert re.match(r"^[0-9a-f]{16}$", app["span_id"])
        assert app["message"].endswith(f" {rid}")

    first = by_uri["/v1/chat-messages"]
    assert first["status"] == "200"
    assert (first["user_id"], first["app_id"]) == ("u1", "a1")
    assert first["request_completion"] == "OK"
    # The client's own traceparent is logged, but what reached the app is ours.
    assert first["http_traceparent"] == CLIENT_TRACEPARENT
    assert app_by_trace[first["request_id"]]["identity"]["user_id"] == "u1"
    assert first["sent_http_content_length"] == str(first["body_bytes_sent"])

    anon = by_uri["/v1/parameters?anonymous=1&user=u2"]
    assert anon["status"] == "200"
    assert anon["user_id"] == ""  # empty, not "-", under escape=json
    # The app still knew who it was: the access log is what lost the attribution.
    assert app_by_trace[anon["request_id"]]["identity"]["user_id"] == "u2"

    denied = by_uri["/v1/datasets/x/documents/d1?status=403"]
    assert denied["status"] == "403"
    assert denied["upstream_status"] == "403"
    assert denied["request_method"] == "DELETE"

    # What nginx logs for a response the upstream cut short (observed with nginx 1.22.1,
    # proxy_buffering off): the upstream's 200, "OK", and only the byte counts show the cut.
    cut = by_uri["/v1/datasets?cut=1"]
    assert cut["status"] == "200"
    assert cut["upstream_status"] == "200"
    assert cut["request_completion"] == "OK"
    assert cut["sent_http_content_length"] == str(CUT_PROMISED)
    assert cut["body_bytes_sent"] == CUT_SENT < CUT_PROMISED
    assert cut["upstream_response_length"] == str(CUT_SENT)

    # The error log names the cut under the connection number the access log recorded.
    def cut_in_error_log() -> bool:
        text = stack.paths.error_log.read_text(errors="replace")
        return any(
            "upstream prematurely closed connection" in err and f"*{cut['connection']} " in err
            for err in text.splitlines()
        )

    wait_until(cut_in_error_log, 10, "the cut in the error log")


def test_cut_stream_is_only_in_the_error_log(stack: NginxUpstream) -> None:
    events: list[str] = []
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        whole = client.post(
            "/v1/chat-messages",
            json={"query": "hi", "user": "u3", "response_mode": "streaming"},
        )
        assert whole.headers["content-type"] == "text/event-stream"
        data = [e for e in whole.text.split("\n\n") if e.startswith("data: ")]
        assert len(data) >= 3
        assert json.loads(data[-1][len("data: ") :])["event"] == "message_end"

        with (
            pytest.raises(httpx.HTTPError),  # raised while reading, after the headers
            client.stream(
                "POST",
                "/v1/chat-messages?cut=1",
                json={"query": "hi", "user": "u3", "response_mode": "streaming"},
            ) as resp,
        ):
            for text in resp.iter_text():
                events.append(text)
    assert "message_end" not in "".join(events)

    lines = wait_for_lines(stack.paths.access_log, 2)
    by_uri = {line["request_uri"]: line for line in lines}
    ok, cut = by_uri["/v1/chat-messages"], by_uri["/v1/chat-messages?cut=1"]
    for line in (ok, cut):
        assert line["sent_http_content_type"] == "text/event-stream"
        assert line["sent_http_content_length"] == ""  # chunked: nothing to compare against
        assert line["user_id"] == "u3"
    # Indistinguishable in the access log...
    assert (cut["status"], cut["request_completion"]) == (ok["status"], ok["request_completion"])
    # ...but not in the error log. Both requests went over one keep-alive connection, so the
    # connection number alone does not tell them apart: the join needs the request line too.
    assert cut["connection"] == ok["connection"]

    def premature(line: dict[str, Any]) -> list[str]:
        request = f'request: "{line["request_method"]} {line["request_uri"]} '
        return [
            err
            for err in stack.paths.error_log.read_text(errors="replace").splitlines()
            if "upstream prematurely closed connection" in err
            and f"*{line['connection']} " in err
            and request in err
        ]

    wait_until(lambda: bool(premature(cut)), 10, "the cut stream in the error log")
    assert premature(ok) == []
