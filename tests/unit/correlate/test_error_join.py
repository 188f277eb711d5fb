"""The service joins Nginx error-log events to access records, whichever arrives first."""

from __future__ import annotations

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from tests.support.otlp_doubles import logs_request, span_attributes

RID = "4bf92f3577b34da6a3ce929d0e0e4736"
T = 1764165600  # 2025-11-26 14:00:00 UTC
ACCESS = orjson.dumps({
    "msec": f"{T + 2}.500", "request_id": RID, "connection": 7, "connection_requests": 1,
    "request_method": "POST", "request_uri": "/v1/chat-messages", "status": "200",
    "request_completion": "OK", "user_id": "u1", "app_id": "a1", "body_bytes_sent": 812,
    "sent_http_content_length": "",
}).decode()
ERROR = ("2025/11/26 14:00:02 [error] 811#811: *7 upstream prematurely closed connection "
         "while reading upstream, client: 127.0.0.1, server: demo, "
         'request: "POST /v1/chat-messages HTTP/1.1", upstream: '
         '"http://127.0.0.1:8000/v1/chat-messages", host: "127.0.0.1:8080"')
NOW = (T + 3) * 10**9


def request(source: str, *bodies: str) -> ExportLogsServiceRequest:
    return logs_request(*bodies, source=source)


def spans(pipeline: Pipeline, req: ExportLogsServiceRequest, now: int = NOW) -> list:
    payload, _ = pipeline.process_logs(req, now_ns=now)
    return [s for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
            for ss in rs.scope_spans for s in ss.spans]


def test_error_first_flags_the_access_span() -> None:
    p = Pipeline(load_settings())
    assert spans(p, request("nginx_error", ERROR)) == []  # waits for its access record
    (span,) = spans(p, request("nginx_access", ACCESS))
    a = span_attributes(span)
    assert span.trace_id.hex() == RID
    assert "truncated:upstream_closed" in a["audit.flags"]
    assert a["nginx.error"].startswith("upstream prematurely closed connection")
    # the error-log line is also a span event, at the time nginx wrote it
    (event,) = span.events
    assert event.name == "nginx error: upstream_closed"
    assert event.time_unix_nano == (T + 2) * 10**9
    event_attrs = {kv.key: kv.value for kv in event.attributes}
    assert event_attrs["message"].string_value.startswith("upstream prematurely closed")
    assert event_attrs["nginx.connection"].int_value == 7
    assert spans(p, request("nginx_access"), now=NOW + 60 * 10**9) == []  # nothing left over


def test_access_first_gives_a_flagged_child_span() -> None:
    p = Pipeline(load_settings())
    (root,) = spans(p, request("nginx_access", ACCESS))
    assert "audit.flags" not in span_attributes(root)  # a cut stream looks whole in the access log
    # A later request of connection 7 (the one cut) may still come: the event waits ...
    assert spans(p, request("nginx_error", ERROR)) == []
    # ... until the access log is past the event's second (or the window ends).
    later = ACCESS.replace('"connection":7', '"connection":8').replace(
        f"{T + 2}.500", f"{T + 4}.100").replace(RID, "5" * 32)
    spans_now = spans(p, request("nginx_access", later))
    (child,) = [s for s in spans_now if s.parent_span_id]
    assert (child.trace_id, child.parent_span_id) == (root.trace_id, root.span_id)
    a = span_attributes(child)
    assert a["audit.flags"] == ["truncated:upstream_closed"] and a["audit.late_evidence"] is True
    assert "audit.error_join.ambiguous" not in a


def test_access_first_child_span_when_the_window_ends() -> None:
    p = Pipeline(load_settings(error_join_window_s=5))
    (root,) = spans(p, request("nginx_access", ACCESS))
    assert spans(p, request("nginx_error", ERROR)) == []
    (child,) = spans(p, request("nginx_access"), now=NOW + 6 * 10**9)
    assert (child.trace_id, child.parent_span_id) == (root.trace_id, root.span_id)


def test_same_batch_either_order() -> None:
    for first, second in ((ACCESS, ERROR), (ERROR, ACCESS)):
        p = Pipeline(load_settings())
        req = ExportLogsServiceRequest()
        for source, body in (("nginx_access" if b is ACCESS else "nginx_error", b)
                             for b in (first, second)):
            rl = req.resource_logs.add()
            kv = rl.resource.attributes.add()
            kv.key, kv.value.string_value = "audit.source", source
            rl.scope_logs.add().log_records.add().body.string_value = body
        (span,) = spans(p, req)
        assert "truncated:upstream_closed" in span_attributes(span)["audit.flags"]


def test_unjoined_event_is_reported_after_the_window() -> None:
    p = Pipeline(load_settings(error_join_window_s=5))
    other = ERROR.replace("*7 ", "*99 ")
    assert spans(p, request("nginx_error", other)) == []
    (alone,) = spans(p, request("nginx_access"), now=NOW + 6 * 10**9)
    a = span_attributes(alone)
    assert a["audit.flags"] == ["truncated:upstream_closed"]
    assert a["audit.trace_id.generated"] is True and a["nginx.connection"] == 99


def test_events_that_are_not_cuts_are_not_records() -> None:
    p = Pipeline(load_settings(error_join_window_s=1))
    idle = ("2025/11/26 14:00:02 [info] 811#811: *9 client 127.0.0.1 closed keepalive "
            "connection")
    assert spans(p, request("nginx_error", idle)) == []
    assert spans(p, request("nginx_access"), now=NOW + 5 * 10**9) == []
