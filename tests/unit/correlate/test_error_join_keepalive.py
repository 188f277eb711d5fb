"""One error event, one request (issue #18): on keep-alive connections the join flags the
connection's last request with the event's line and second, waits while that request may still
come, marks what it cannot tell apart, and gives the same answer on retries and after a restart.
"""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.correlate.errorlog import ErrorLogJoin
from audit_guard.pipeline import Pipeline
from audit_guard.sources.nginx_error import parse_line
from audit_guard.telemetry import BatchStats, Telemetry
from tests.support.otlp_doubles import logs_request

T = 1764165600  # 2025-11-26 14:00:00 UTC
NS = 10**9
LINE = "/v1/chat-messages"


def access(n: int, at: float, *, connection: int = 7, uri: str = LINE, took: float = 0.2,
           requests: bool = True, protocol: str = "HTTP/1.1") -> str:
    fields: dict[str, Any] = {
        "msec": f"{at:.3f}", "request_id": f"{connection:04x}{n:04x}" + "0" * 24,
        "connection": connection, "request_method": "POST", "request_uri": uri,
        "status": "200", "request_completion": "OK", "request_time": f"{took:.3f}",
        "user_id": "u1", "app_id": "a1", "server_protocol": protocol}
    if requests:
        fields["connection_requests"] = n
    return orjson.dumps(fields).decode()


def error(at: int, *, connection: int = 7, uri: str = LINE,
          message: str = "upstream prematurely closed connection while reading upstream",
          protocol: str = "HTTP/1.1") -> str:
    stamp = f"2025/11/26 14:{(at - T) // 60:02d}:{(at - T) % 60:02d}"
    return (f"{stamp} [error] 811#811: *{connection} {message}, client: 10.0.0.1, server: demo, "
            f'request: "POST {uri} {protocol}", upstream: "http://127.0.0.1:5001{uri}", '
            'host: "dify.local"')


def run(p: Pipeline, source: str, *bodies: str, now: int = (T + 3) * NS,
        stats: BatchStats | None = None) -> list[dict[str, Any]]:
    payload, _ = p.process_logs(logs_request(*bodies, source=source), now_ns=now, stats=stats)
    out = []
    for rs in ExportTraceServiceRequest.FromString(payload).resource_spans:
        for span in (s for ss in rs.scope_spans for s in ss.spans):
            a: dict[str, Any] = {"trace_id": span.trace_id.hex(), "parent": span.parent_span_id}
            for kv in span.attributes:
                kind = kv.value.WhichOneof("value")
                a[kv.key] = ([v.string_value for v in kv.value.array_value.values]
                             if kind == "array_value" else getattr(kv.value, kind))
            out.append(a)
    return out


def cut(spans: list[dict[str, Any]]) -> list[str]:
    """The request ids (first 8 hex digits: connection, request) flagged by an event."""
    return [s["trace_id"][:8] for s in spans
            if any(f.startswith("truncated:") for f in s.get("audit.flags", []))]


def test_only_the_last_of_three_same_line_requests_is_flagged() -> None:
    rows = [access(1, T + 2.1), access(2, T + 2.4), access(3, T + 2.9)]
    for order in ("error first", "same request"):
        p = Pipeline(load_settings())
        if order == "error first":
            assert run(p, "nginx_error", error(T + 2)) == []
            spans = run(p, "nginx_access", *rows)
        else:
            req = logs_request(error(T + 2), source="nginx_error")
            req.resource_logs.extend(logs_request(*rows, source="nginx_access").resource_logs)
            payload, _ = p.process_logs(req, now_ns=(T + 3) * NS)
            spans = [{"trace_id": s.trace_id.hex(), "audit.flags": list(
                kv.value.array_value.values[0].string_value for kv in s.attributes
                if kv.key == "audit.flags")}
                for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
                for ss in rs.scope_spans for s in ss.spans]
        assert cut(spans) == ["00070003"], order


def test_a_later_request_on_the_connection_rules_a_candidate_out() -> None:
    p = Pipeline(load_settings(error_join_window_s=5))
    assert run(p, "nginx_error", error(T + 2)) == []
    # Request 1 has the line and the second, but request 2 came after it on the connection:
    # a cut ends the connection, so request 1 was not cut.
    spans = run(p, "nginx_access", access(1, T + 2.1), access(2, T + 2.5, uri="/v1/other"))
    assert cut(spans) == []
    (alone,) = run(p, "nginx_access", now=(T + 9) * NS)
    assert alone["audit.trace_id.generated"] is True  # the request is not in the access log


def test_the_event_s_second_must_fall_within_the_request() -> None:
    p = Pipeline(load_settings(error_join_window_s=5))
    run(p, "nginx_error", error(T + 2))
    # started at T+3.0 (took 0.5 s, logged at T+3.5): not running when nginx wrote the line
    assert cut(run(p, "nginx_access", access(1, T + 3.5, took=0.5))) == []
    # a long stream that started before the event's second and ended after it is
    p = Pipeline(load_settings(error_join_window_s=5))
    run(p, "nginx_error", error(T + 2))
    assert cut(run(p, "nginx_access", access(1, T + 3.5, took=20))) == ["00070001"]


def test_access_first_waits_for_the_connection_s_last_request() -> None:
    p = Pipeline(load_settings())
    assert cut(run(p, "nginx_access", access(1, T + 2.1), access(2, T + 2.4))) == []
    assert run(p, "nginx_error", error(T + 2)) == []  # request 3, the cut one, may follow
    spans = run(p, "nginx_access", access(3, T + 2.9), access(1, T + 6, connection=9))
    assert cut(spans) == ["00070003"]  # on the record itself, no child span
    assert not [s for s in spans if s["parent"]]
    assert run(p, "nginx_access", now=(T + 60) * NS) == []  # nothing left over


def test_ambiguous_without_connection_requests() -> None:
    p = Pipeline(load_settings())
    stats = BatchStats()
    run(p, "nginx_error", error(T + 2))
    spans = run(p, "nginx_access", access(1, T + 2.1, requests=False),
                access(2, T + 2.4, requests=False), stats=stats)
    (flagged,) = [s for s in spans if "audit.flags" in s]
    assert flagged["trace_id"][:8] == "00070002"  # the last one logged
    assert flagged["audit.error_join.ambiguous"] is True
    telemetry = Telemetry()
    telemetry.record_stats(stats)
    assert telemetry.snapshot()["audit_error_join_ambiguous_total"] == 1


def test_http2_streams_do_not_end_the_connection() -> None:
    p = Pipeline(load_settings())
    run(p, "nginx_error", error(T + 2, protocol="HTTP/2.0"))
    spans = run(p, "nginx_access", access(1, T + 2.1, protocol="HTTP/2.0"),
                access(2, T + 2.4, uri="/v1/other", protocol="HTTP/2.0"))
    (flagged,) = [s for s in spans if "audit.flags" in s]
    assert flagged["trace_id"][:8] == "00070001"
    assert "audit.error_join.ambiguous" not in flagged  # the only candidate


def test_client_abort_flags_request_incomplete_on_the_last_request_only() -> None:
    p = Pipeline(load_settings())
    run(p, "nginx_error", error(
        T + 2, message="writev() failed (104: Connection reset by peer) while sending to client"))
    spans = run(p, "nginx_access", access(1, T + 2.1), access(2, T + 2.8))
    (flagged,) = [s for s in spans if "audit.flags" in s]
    assert flagged["trace_id"][:8] == "00070002"
    assert flagged["audit.flags"] == ["truncated:request_incomplete"]


def test_a_retry_gives_the_same_spans_and_a_resent_batch_the_same_flag() -> None:
    p = Pipeline(load_settings())
    run(p, "nginx_error", error(T + 2))
    rows = logs_request(access(1, T + 2.1), access(2, T + 2.4), source="nginx_access")
    savepoint = p.begin()
    first, _ = p.process_logs(rows, now_ns=(T + 3) * NS)
    p.rollback(savepoint)
    again, _ = p.process_logs(rows, now_ns=(T + 3) * NS)
    assert first == again
    resent = run(p, "nginx_access", access(1, T + 2.1), access(2, T + 2.4))
    assert cut(resent) == ["00070002"]


def test_dump_and_load_keep_what_waits() -> None:
    join = ErrorLogJoin(30 * NS)
    p = Pipeline(load_settings())
    p.errors = join
    run(p, "nginx_access", access(1, T + 2.1), access(2, T + 2.4))
    event = parse_line(1, error(T + 2))
    assert event is not None
    join.on_events([event], (T + 3) * NS)
    blob = join.dump()
    restored = ErrorLogJoin(30 * NS)
    assert restored.load(blob) == 1
    assert restored.dump() == blob
    (decided,) = restored.decide((T + 40) * NS)  # the window ended: under request 2
    assert decided.parent is not None and decided.parent[0].hex()[:8] == "00070002"
    # a state file written before this version (rows of three) still loads
    old = orjson.dumps([["p", orjson.loads(blob)[0][1], (T + 33) * NS]])
    assert ErrorLogJoin(30 * NS).load(old) == 1
