"""The app audit-log source ("app"): Dify's JSON and text log lines, its request-log message,
our demo upstream's lines, generic JSON audit lines with a JMESPath field mapping, and broken
lines.

The Dify lines are produced the way Dify produces them, from its source (langgenius/dify):
- JSON: `api/core/logging/structured_formatter.py` (StructuredJSONFormatter._build_log_dict:
  keys ts, severity, service, caller, message, then trace_id, span_id, identity, attributes,
  stack_trace only when set; `ts` = `datetime.now(UTC).isoformat(timespec="milliseconds")
  .replace("+00:00", "Z")`; WARNING is written "WARN"; serialized with orjson.dumps).
- Text: `api/configs/feature/__init__.py` LoggingConfig.LOG_FORMAT default
  `%(asctime)s.%(msecs)03d %(levelname)s [%(threadName)s] [%(filename)s:%(lineno)d]
  %(trace_id)s - %(message)s`, LOG_DATEFORMAT default None (docker/.env.example sets
  `%Y-%m-%d %H:%M:%S`), LOG_TZ default "UTC" (applied in `api/extensions/ext_logging.py`).
- Request line: `api/extensions/ext_request_logging.py` _log_request_finished:
  `logger.info("%s %s %s %s %s", method, path, status_code, duration_ms or "-", trace_id)`
  with duration_ms = round(…, 3) and trace_id = OTel trace id or X-Trace-Id header or "".
The text lines go through the real `logging.Formatter`; the JSON ones through a replica of
`_build_log_dict` fed a real `logging.LogRecord` (with `ts` from the record's time so the test is
deterministic instead of `datetime.now`).
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from audit_guard import flags
from audit_guard.correlate.traces import assign_ids
from audit_guard.grammar import timestamps
from audit_guard.sources.app import (
    SOURCE,
    FieldMapping,
    parse_line,
    parse_lines,
    parse_request_message,
)
from demo.upstream import serve

TRACE = "4bf92f3577b34da6a3ce929d0e0e4702"
SPAN = "00f067aa0ba902b7"
# 2025-11-26T14:00:00.123Z
T0 = 1764165600
T0_NS = T0 * 1_000_000_000 + 123_000_000
DIFY_TEXT_FORMAT = (
    "%(asctime)s.%(msecs)03d %(levelname)s [%(threadName)s] "
    "[%(filename)s:%(lineno)d] %(trace_id)s - %(message)s"
)
_SEVERITY = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN",
             logging.ERROR: "ERROR", logging.CRITICAL: "ERROR"}


def _record(msg: str, args: tuple[Any, ...] = (), *, level: int = logging.INFO,
            pathname: str = "/app/api/extensions/ext_request_logging.py", lineno: int = 73,
            created: float = T0 + 0.1235, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("extensions.ext_request_logging", level, pathname, lineno, msg,
                               args, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
    record.threadName = "Dummy-1"  # gunicorn's gevent workers
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _request_record(method: str, path: str, status: int | str, duration_ms: float | None,
                    message_trace: str, **extra: Any) -> logging.LogRecord:
    # ext_request_logging.py: the exact call, arguments in the same order.
    return _record("%s %s %s %s %s",
                   (method, path, status, duration_ms if duration_ms is not None else "-",
                    message_trace), **extra)


def dify_json(record: logging.LogRecord, service: str = "api") -> str:
    """StructuredJSONFormatter._build_log_dict + format (structured_formatter.py)."""
    ts = datetime.fromtimestamp(record.created, UTC)
    log_dict: dict[str, Any] = {
        "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "severity": _SEVERITY.get(record.levelno, "INFO"),
        "service": service,
        "caller": f"{record.filename}:{record.lineno}",
        "message": record.getMessage(),
    }
    trace_id = getattr(record, "trace_id", "")
    span_id = getattr(record, "span_id", "")
    if trace_id:
        log_dict["trace_id"] = trace_id
    if span_id:
        log_dict["span_id"] = span_id
    identity = {k: getattr(record, k) for k in ("tenant_id", "user_id", "user_type")
                if getattr(record, k, None)}
    if identity:
        log_dict["identity"] = identity
    attributes = getattr(record, "attributes", None)
    if attributes:
        log_dict["attributes"] = attributes
    if getattr(record, "stack_trace", None):
        log_dict["stack_trace"] = record.stack_trace
    return orjson.dumps(log_dict).decode("utf-8")


def dify_text(record: logging.LogRecord, datefmt: str | None = "%Y-%m-%d %H:%M:%S") -> str:
    """Dify's text format through the real logging.Formatter, LOG_TZ=UTC (ext_logging.py)."""
    formatter = logging.Formatter(DIFY_TEXT_FORMAT, datefmt)
    formatter.converter = time.gmtime  # what LOG_TZ=UTC's time_converter amounts to
    if not hasattr(record, "trace_id"):
        record.trace_id = ""
    return formatter.format(record)


# -- Dify JSON -------------------------------------------------------------------------------


def test_dify_json_request_line() -> None:
    line = dify_json(_request_record(
        "POST", "/v1/chat-messages", 200, 812.347, TRACE, trace_id=TRACE, span_id=SPAN,
        tenant_id="t-1", user_id="eu-7", user_type="end_user"))
    assert line.startswith('{"ts":"2025-11-26T14:00:00.123Z","severity":"INFO","service":"api",'
                           '"caller":"ext_request_logging.py:73","message":"POST ')
    batch = parse_lines([line])
    assert batch.source == SOURCE == "app"
    rec = batch.row(0)
    assert rec.time_unix_nano == T0_NS
    assert (rec.method, rec.path, rec.status) == ("POST", "/v1/chat-messages", 200)
    assert rec.duration_ns == 812_347_000
    assert rec.user_id == "eu-7"
    assert rec.app_id is None  # Dify logs no app id
    assert rec.request_id == TRACE
    assert rec.traceparent is None and rec.name is None
    assert rec.attributes == {
        "dify.tenant_id": "t-1", "dify.user_type": "end_user", "log.severity": "INFO",
        "dify.service": "api", "code.file.path": "ext_request_logging.py",
        "code.line.number": 73,
    }
    assert rec.flags == [] and rec.truncation_reasons == [] and rec.unparsed == ()
    assert rec.fields["span_id"] == SPAN
    assert rec.raw == line


def test_dify_json_request_id_joins_the_nginx_trace() -> None:
    batch = parse_lines([dify_json(_request_record("GET", "/v1/parameters", 200, 3.5, TRACE,
                                                   trace_id=TRACE, span_id=SPAN))])
    assign_ids(batch)
    assert batch.trace_id[0] == bytes.fromhex(TRACE)


def test_dify_json_without_otel() -> None:
    # OTel off: no trace id in the message (a trailing space is left), and the `trace_id` key is
    # Dify's per-request fallback (uuid5 of a random request id, core/logging/context.py).
    fallback = "9f1c0e3a5b7d4e2f8a6c1b3d5e7f9a0b"
    line = dify_json(_request_record("GET", "/console/api/apps", 200, 4.0, "",
                                     trace_id=fallback, user_id="acc-1", user_type="account"))
    assert orjson.loads(line)["message"] == "GET /console/api/apps 200 4.0 "
    rec = parse_line(line)
    assert (rec.method, rec.path, rec.status, rec.duration_ns) == (
        "GET", "/console/api/apps", 200, 4_000_000)
    assert rec.request_id == fallback
    assert rec.attributes is not None and rec.attributes["dify.user_type"] == "account"


def test_dify_json_message_trace_wins_over_key() -> None:
    external = "my-external-trace_42"  # X-Trace-Id header: 1-128 of [A-Za-z0-9_-]
    line = dify_json(_request_record("POST", "/v1/workflows/run", 201, 1.25, external,
                                     trace_id="0" * 31 + "1"))
    assert parse_line(line).request_id == external


def test_dify_json_request_line_edge_values() -> None:
    # No request context: method and path "-"; no start time: duration "-".
    rec = parse_line(dify_json(_request_record("-", "-", 500, None, TRACE)))
    assert (rec.method, rec.path, rec.status, rec.duration_ns) == (None, None, 500, 0)
    assert rec.request_id == TRACE
    # request.path is percent-decoded: it may hold spaces (and a decoded "?").
    rec = parse_line(dify_json(_request_record("GET", "/files/my report.pdf", 404, 0.0, TRACE)))
    assert (rec.path, rec.status) == ("/files/my report.pdf", 404)


def test_dify_json_other_lines() -> None:
    record = _record("Failed to invoke %s", ("tool",), level=logging.ERROR,
                     pathname="/app/api/core/tools/tool_engine.py", lineno=201,
                     trace_id=TRACE, span_id=SPAN, stack_trace="Traceback ...\nValueError: x\n")
    rec = parse_line(dify_json(record))
    assert (rec.method, rec.path, rec.status) == (None, None, None)  # not a request line
    assert rec.time_unix_nano == T0_NS
    assert rec.request_id == TRACE
    assert rec.attributes == {"log.severity": "ERROR", "dify.service": "api",
                              "code.file.path": "tool_engine.py", "code.line.number": 201}
    warn = parse_line(dify_json(_record("careful", level=logging.WARNING)))
    assert warn.attributes is not None and warn.attributes["log.severity"] == "WARN"
    assert warn.request_id is None


def test_dify_json_wrong_types_never_raise() -> None:
    obj = {"ts": 5, "severity": "INFO", "caller": ["x"], "message": 42,
           "identity": ["not", "a", "map"], "attributes": {"status": {"a": 1}, "app_id": 7},
           "trace_id": "xyz"}
    rec = parse_line(json.dumps(obj))
    assert rec.flags == []
    assert rec.status is None and "status" in rec.unparsed
    assert rec.app_id == "7"
    assert rec.time_unix_nano == 5_000_000_000  # a number is read as epoch seconds
    assert rec.request_id is None


# -- Dify text -------------------------------------------------------------------------------


def test_dify_text_request_line_docker_dateformat() -> None:
    line = dify_text(_request_record("POST", "/v1/chat-messages", 200, 12.5, TRACE,
                                     trace_id=TRACE))
    assert line == ("2025-11-26 14:00:00.123 INFO [Dummy-1] [ext_request_logging.py:73] "
                    f"{TRACE} - POST /v1/chat-messages 200 12.5 {TRACE}")
    rec = parse_line(line)
    assert rec.time_unix_nano == T0_NS
    assert (rec.method, rec.path, rec.status, rec.duration_ns) == (
        "POST", "/v1/chat-messages", 200, 12_500_000)
    assert rec.request_id == TRACE
    assert rec.attributes == {"log.severity": "INFO", "code.file.path": "ext_request_logging.py",
                              "code.line.number": 73}
    assert rec.flags == [] and rec.fields["threadName"] == "Dummy-1"


def test_dify_text_default_dateformat_repeats_milliseconds() -> None:
    # LOG_DATEFORMAT unset: asctime already ends in ",123", then ".%(msecs)03d" adds ".123".
    line = dify_text(_request_record("GET", "/v1/parameters", 200, 0.8, ""), datefmt=None)
    assert line.startswith("2025-11-26 14:00:00,123.123 INFO [Dummy-1] ")
    assert "[ext_request_logging.py:73]  - GET /v1/parameters 200 0.8 " in line  # no trace id
    rec = parse_line(line)
    assert rec.time_unix_nano == T0_NS
    assert (rec.method, rec.path, rec.status, rec.request_id) == (
        "GET", "/v1/parameters", 200, None)


def test_dify_text_other_line_and_local_tz() -> None:
    line = dify_text(_record("Thread %s started", ("Thread-3 (worker)",),
                             level=logging.WARNING, trace_id=TRACE))
    assert " WARNING [Dummy-1] " in line  # text keeps Python's level name
    rec = parse_line(line)
    assert rec.method is None and rec.request_id == TRACE
    assert rec.attributes is not None and rec.attributes["log.severity"] == "WARNING"
    # LOG_TZ=Asia/Shanghai writes wall-clock time there: 22:00:00.123 is 14:00:00.123Z.
    shanghai = line.replace("2025-11-26 14:00:00", "2025-11-26 22:00:00")
    assert parse_line(shanghai, local_tz=ZoneInfo("Asia/Shanghai")).time_unix_nano == T0_NS
    assert parse_line(shanghai).time_unix_nano == T0_NS + 8 * 3600 * 1_000_000_000


def test_dify_text_traceback_continuation_is_malformed() -> None:
    batch = parse_lines([
        dify_text(_record("boom", level=logging.ERROR)),
        "Traceback (most recent call last):",
        '  File "/app/api/app.py", line 1, in <module>',
    ])
    assert batch.flags == {1: [flags.MALFORMED], 2: [flags.MALFORMED]}
    assert batch.raw[1] == "Traceback (most recent call last):"


# -- the request-log message -----------------------------------------------------------------


@pytest.mark.parametrize(("message", "expected"), [
    (f"GET /v1/parameters 200 1.234 {TRACE}", ("GET", "/v1/parameters", 200, 1_234_000, TRACE)),
    ("DELETE /v1/conversations/c1 204 0.0 ", ("DELETE", "/v1/conversations/c1", 204, 0, None)),
    ("GET /v1/x 200 1.5", ("GET", "/v1/x", 200, 1_500_000, None)),  # trailing space stripped
    ("- - 500 - ", (None, None, 500, None, None)),
    ("GET /a?b=1 200 2 abc", ("GET", "/a", 200, 2_000_000, "abc")),
])
def test_request_message(message: str, expected: tuple[Any, ...]) -> None:
    assert parse_request_message(message) == expected


@pytest.mark.parametrize("message", [
    "Received Request GET -> /v1/x",
    "Something happened 500 1 ok",  # no upper-case method, no path
    "GET v1/x 200 1.0",
    "Response 200 OK application/json",
])
def test_not_a_request_message(message: str) -> None:
    assert parse_request_message(message) is None


# -- the demo upstream -----------------------------------------------------------------------


def _request(port: int, method: str, target: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_demo_upstream_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    server = serve(0, log)
    port = server.server_address[1]
    traceparent = f"00-{TRACE}-{TRACE[:16]}-01"
    try:
        assert _request(port, "POST", "/v1/chat-messages?conversation=1",
                        {"query": "hi", "user": "alice", "response_mode": "blocking"},
                        {"Authorization": "Bearer app-app42", "traceparent": traceparent}) == 200
        assert _request(port, "GET", "/v1/parameters?status=503",
                        headers={"X-Request-ID": "0123456789abcdef0123456789abcdef"}) == 503
        assert _request(port, "GET", "/v1/parameters?noaudit=1") == 200
    finally:
        server.shutdown()
        server.server_close()
    lines = log.read_bytes().splitlines()
    assert len(lines) == 2  # noaudit wrote none
    batch = parse_lines(lines)
    first, second = batch.rows()
    assert (first.method, first.path, first.status) == ("POST", "/v1/chat-messages", 200)
    assert (first.user_id, first.app_id, first.request_id) == ("alice", "app42", TRACE)
    assert first.duration_ns > 0
    assert first.attributes is not None
    assert first.attributes["dify.tenant_id"] == "demo-tenant"
    assert first.attributes["code.file.path"] == "demo/upstream.py"
    assert (second.status, second.user_id, second.app_id) == (503, "demo-user", "demo")
    assert second.request_id == "0123456789abcdef0123456789abcdef"
    now = time.time_ns()
    for rec in (first, second):
        assert rec.time_unix_nano is not None
        assert 0 <= now - rec.time_unix_nano < 60 * 1_000_000_000
        assert rec.flags == [] and rec.truncation_reasons == []


# -- generic JSON and the field mapping ------------------------------------------------------


def test_generic_json_default_keys() -> None:
    line = json.dumps({
        "time": "2025-11-26T15:00:00.123456789+01:00", "user_id": "u1", "app_id": "a1",
        "method": "post", "url": "https://api.example.com/v1/chat-messages?x=1",
        "status": "201", "request_id": "r-1", "trace_id": TRACE, "duration_ms": 2.5,
        "client_ip": "10.0.0.7",
    })
    rec = parse_line(line)
    assert rec.time_unix_nano == T0 * 1_000_000_000 + 123_456_789  # every digit kept
    assert (rec.method, rec.path, rec.status) == ("POST", "/v1/chat-messages", 201)
    assert (rec.user_id, rec.app_id, rec.request_id) == ("u1", "a1", "r-1")
    assert rec.duration_ns == 2_500_000
    assert rec.client_address == "10.0.0.7"
    assert rec.attributes is None and rec.flags == []


def test_generic_json_trace_id_and_traceparent() -> None:
    tp = f"00-{TRACE}-{SPAN}-01"
    rec = parse_line(json.dumps({"ts": "2025-11-26T14:00:00.123Z", "traceparent": tp,
                                 "trace_id": TRACE, "path": "/v1/x"}))
    assert (rec.request_id, rec.traceparent) == (TRACE, tp)
    assert rec.time_unix_nano == T0_NS


@pytest.mark.parametrize(("value", "expected"), [
    (T0 + 0.123, T0_NS),
    (str(T0) + ".123", T0_NS),
    ((T0 * 1000) + 123, T0_NS),  # epoch milliseconds
    ("2025-11-26T14:00:00.123Z", T0_NS),
    ("2025-11-26 14:00:00,123", T0_NS),
    ("2025-11-26T16:00:00.123+0200", T0_NS),
    ("2025-11-26T14:00:00Z", T0 * 1_000_000_000),
])
def test_generic_time_forms(value: Any, expected: int) -> None:
    assert parse_line(json.dumps({"timestamp": value, "path": "/"})).time_unix_nano == expected


def test_generic_bad_values_are_unparsed() -> None:
    rec = parse_line(json.dumps({"time": "yesterday", "status": "OK", "user_id": {"id": 1},
                                 "path": "/v1/x"}))
    assert rec.time_unix_nano is None and rec.status is None and rec.user_id is None
    assert set(rec.unparsed) == {"time", "status", "user_id"}
    assert timestamps.iso8601_ns("2025-13-01T00:00:00Z") is None  # month 13


def test_field_mapping_nested_keys() -> None:
    mapping = FieldMapping({
        "user_id": "actor.id", "app_id": "context.app", "time": '"@timestamp"',
        "method": "http.request.method", "path": "http.request.path",
        "status": "http.response.status_code", "request_id": "trace.id",
        "duration_ms": "event.duration_ms",
    })
    obj = {
        "@timestamp": "2025-11-26T14:00:00.123Z",
        "actor": {"id": "acc-9", "type": "account"},
        "context": {"app": "app-3"},
        "http": {"request": {"method": "PUT", "path": "/v1/model-configs?x=1"},
                 "response": {"status_code": 204}},
        "trace": {"id": TRACE},
        "event": {"duration_ms": 7},
        "user_id": "not-the-actor",  # a default key the mapping overrides
    }
    batch = parse_lines([json.dumps(obj), orjson.dumps(obj)], mapping)
    for rec in batch.rows():
        assert rec.time_unix_nano == T0_NS
        assert (rec.user_id, rec.app_id) == ("acc-9", "app-3")
        assert (rec.method, rec.path, rec.status) == ("PUT", "/v1/model-configs", 204)
        assert rec.request_id == TRACE and rec.duration_ns == 7_000_000
    # A mapped field that the record lacks is missing, not filled from a default key.
    rec = parse_line(json.dumps({"user_id": "u-default", "path": "/v1/x"}), mapping)
    assert rec.user_id is None and rec.path is None


def test_field_mapping_on_dify_lines_and_runtime_errors() -> None:
    line = dify_json(_request_record("POST", "/v1/chat-messages", 200, 1.0, TRACE,
                                     attributes={"app": {"id": "a-77"}}, user_id="eu-1"))
    mapping = FieldMapping({"app_id": "attributes.app.id", "status": "length(message)"})
    rec = parse_line(line, mapping)
    assert rec.app_id == "a-77"  # the mapping adds what Dify's layout lacks
    assert rec.user_id == "eu-1" and rec.method == "POST"
    assert rec.status == len("POST /v1/chat-messages 200 1.0 " + TRACE)
    # A function given the wrong type fails at run time: the field is unparsed, no exception.
    rec = parse_line(json.dumps({"message": 5, "path": "/"}), mapping)
    assert rec.status is None and "status" in rec.unparsed


def test_bad_mapping_errors() -> None:
    with pytest.raises(ValueError) as err:
        FieldMapping({"user_id": "actor.id", "time": "@timestamp"})
    message = str(err.value)
    # The rules' error reporting (audit_guard.grammar.jmes), plus the quoting hint.
    assert message.startswith("field mapping 'time': invalid JMESPath expression '@timestamp' "
                              "at position 1 near 'timestamp': ")
    assert "'\"@timestamp\"'" in message  # the quoting hint
    with pytest.raises(ValueError, match=r"'app_id'.*'context\.\[' at position 9"):
        FieldMapping({"app_id": "context.["})
    with pytest.raises(ValueError, match=r"'user_id'.*at position 0.*Unclosed"):
        FieldMapping({"user_id": '"actor'})
    with pytest.raises(ValueError, match="'user_id'.*empty"):
        FieldMapping({"user_id": ""})
    with pytest.raises(ValueError, match="unknown field 'actor'"):
        FieldMapping({"actor": "actor.id"})
    # Refused when configured, as a rule would be, not failed on every record.
    with pytest.raises(ValueError, match=r"'user_id'.*unknown function lenght\(\)"):
        FieldMapping({"user_id": "lenght(actor)"})
    with pytest.raises(ValueError, match=r"'status'.*length\(\) takes 1 argument"):
        FieldMapping({"status": "length(a, b)"})


def test_mapping_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import jmespath

    mapping = FieldMapping({"user_id": "actor.id"})
    calls: list[str] = []
    monkeypatch.setattr(jmespath, "compile", lambda e: calls.append(e))
    monkeypatch.setattr(jmespath, "search", lambda *a: calls.append("search"))
    batch = parse_lines([json.dumps({"actor": {"id": f"u{i}"}}) for i in range(50)], mapping)
    assert batch.user_id == [f"u{i}" for i in range(50)]
    assert calls == []


# -- malformed and cut lines -----------------------------------------------------------------


def test_malformed_lines_keep_raw() -> None:
    lines: list[str | bytes] = ["not a log line", b"", "[1, 2]", '"text"',
                                '{"user_id": "u1", oops}', b"\xff\xfe garbage"]
    batch = parse_lines(lines)
    assert len(batch) == len(lines)
    assert batch.flags == {i: [flags.MALFORMED] for i in range(len(lines))}
    assert batch.truncation_reasons == {}
    assert batch.raw == lines
    assert batch.user_id[4] == "u1"  # broken (closed) JSON: what came before is still read


def test_cut_dify_line_is_salvaged() -> None:
    line = dify_json(_request_record("POST", "/v1/chat-messages", 200, 5.0, TRACE,
                                     trace_id=TRACE, span_id=SPAN, tenant_id="t",
                                     user_id="eu-1", user_type="end_user"))
    cut = line[: line.index('"user_id"') + 5].encode()  # the writer died inside `identity`
    batch = parse_lines([cut, line])
    assert batch.truncation_reasons == {0: [flags.JSON_CUT]}
    assert batch.flags == {}
    rec = batch.row(0)
    # Every complete scalar member before the cut: ts … span_id, so the request line survives.
    assert (rec.method, rec.path, rec.status, rec.request_id) == (
        "POST", "/v1/chat-messages", 200, TRACE)
    assert rec.time_unix_nano == T0_NS
    assert rec.user_id is None  # lost with `identity`: the validator flags it
    assert rec.raw == cut


def test_cut_generic_line() -> None:
    batch = parse_lines(['{"user_id": "u1", "status": 200, "path": "/v1/chat-mess'])
    assert batch.truncation_reasons == {0: [flags.JSON_CUT]}
    assert (batch.user_id[0], batch.status[0], batch.path[0]) == ("u1", 200, None)


def test_mixed_batch_keeps_order() -> None:
    lines = [
        dify_json(_request_record("GET", "/v1/a", 200, 1.0, TRACE)),
        "garbage",
        dify_text(_request_record("GET", "/v1/b", 404, 1.0, TRACE)),
        json.dumps({"path": "/v1/c", "status": 500}),
    ]
    batch = parse_lines(lines)
    assert batch.path == ["/v1/a", None, "/v1/b", "/v1/c"]
    assert batch.status == [200, None, 404, 500]
    assert batch.flags == {1: [flags.MALFORMED]}


@pytest.mark.parametrize("expression", [
    "actor.id", '"@timestamp"', "a.b.c", '"x-y".z', "actor", "actor.id.deeper",
    "list[0]", "length(message)", "actor.id || fallback", "items[*].id",
])
def test_mapping_fast_path_matches_jmespath(expression: str) -> None:
    import jmespath

    objs: list[Any] = [
        {"actor": {"id": "u1"}, "@timestamp": "t", "a": {"b": {"c": 3}}, "x-y": {"z": None},
         "list": [7], "message": "abc", "fallback": "f", "items": [{"id": 1}, {"id": 2}]},
        {"actor": "flat", "a": [1], "list": {}, "message": "", "items": []},
        {"actor": {"id": {"nested": True}}, "a": {"b": None}},
        {},
    ]
    mapping = FieldMapping({"user_id": expression})
    for obj in objs:
        try:
            expected: Any = jmespath.search(expression, obj)
        except jmespath.exceptions.JMESPathError:
            expected = "error"
        found, failed = mapping.apply(obj)
        assert (found["user_id"] if not failed else "error") == expected


def test_odd_numbers_never_raise() -> None:
    batch = parse_lines([
        json.dumps({"time": 1e300, "duration_ms": 1e300, "path": "/"}),
        '{"time": NaN, "duration_ms": Infinity, "status": true, "path": "/"}',
        json.dumps({"time": "0001-01-01T00:00:00Z", "status": 99999999999999999999}),
        json.dumps({"time": -1, "duration_ms": -5}),
    ])
    # Out of the unsigned 64-bit ns range a span can hold: unparsed, not exported wrong.
    assert batch.time_unix_nano == [None, None, None, None]
    assert batch.duration_ns == [0, 0, 0, 0]
    assert "time" in batch.unparsed[0] and "time" in batch.unparsed[2]
    assert batch.flags == {1: [flags.MALFORMED]}  # NaN and Infinity are not JSON
