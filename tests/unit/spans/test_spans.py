"""Span building: semantic conventions, audit attributes, deterministic ids."""

from __future__ import annotations

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline

RID = "4bf92f3577b34da6a3ce929d0e0e4736"
LINE = {
    "msec": "1764165600.500",
    "request_time": "0.250",
    "request_id": RID,
    "remote_addr": "10.1.2.3",
    "host": "api.local",
    "http_user_agent": "ua/1",
    "request_method": "GET",
    "request_uri": "/v1/datasets/ds1/documents?page=2",
    "status": "200",
    "user_id": "u1",
    "app_id": "a1",
    "body_bytes_sent": "30000",
    "sent_http_content_length": "100000",
    "request_completion": "OK",
}


def attrs(span: Span) -> dict:
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = (
            [v.string_value for v in kv.value.array_value.values]
            if kind == "array_value"
            else getattr(kv.value, kind)
        )
    return out


def export(pipeline: Pipeline, *bodies: str, offsets: list[int] | None = None) -> list[Span]:
    """The spans of one Export of `bodies`; `offsets`: as file_log's include_file_record_offset
    gives them (with the file's path and name around it, as the shipped config sets)."""
    req = ExportLogsServiceRequest()
    scope = req.resource_logs.add().scope_logs.add()
    for i, body in enumerate(bodies):
        record = scope.log_records.add()
        record.body.string_value = body
        if offsets is not None:
            record.attributes.add(key="log.file.name").value.string_value = "audit.json.log"
            record.attributes.add(key="log.file.record_offset").value.int_value = offsets[i]
    payload, count = pipeline.process_logs(req, now_ns=42)
    assert count == len(bodies)
    traces = ExportTraceServiceRequest.FromString(payload)  # the official schema decodes it
    rs = traces.resource_spans[0]
    assert rs.resource.attributes[0].key == "service.name"
    assert rs.resource.attributes[0].value.string_value == "nginx"
    return list(rs.scope_spans[0].spans)


def test_server_span_semantic_conventions(pipeline) -> None:
    (span,) = export(pipeline, orjson.dumps(LINE).decode())
    assert span.trace_id.hex() == RID and span.span_id.hex() == RID[:16]
    assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert span.name == "GET /v1/datasets/{dataset_id}/documents"
    assert span.end_time_unix_nano == 1764165600_500_000_000
    assert span.end_time_unix_nano - span.start_time_unix_nano == 250_000_000
    a = attrs(span)
    assert a["http.request.method"] == "GET"
    assert a["url.path"] == "/v1/datasets/ds1/documents"
    assert a["http.route"] == "/v1/datasets/{dataset_id}/documents"
    assert a["http.response.status_code"] == 200
    assert a["client.address"] == "10.1.2.3"
    assert a["server.address"] == "api.local"
    assert a["user_agent.original"] == "ua/1"
    assert (a["user.id"], a["app.id"]) == ("u1", "a1")
    assert a["audit.truncated"] is True
    assert a["audit.truncation.reason"] == "response_short"
    assert a["audit.flags"] == ["truncated:response_short"]
    assert a["audit.valid"] is True
    assert "error.type" not in a
    assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET


def test_5xx_is_error_4xx_is_not(pipeline) -> None:
    s500, s404 = export(
        pipeline,
        orjson.dumps({**LINE, "status": "502", "body_bytes_sent": "100000"}).decode(),
        orjson.dumps({**LINE, "status": 404, "body_bytes_sent": "100000"}).decode(),
    )
    assert s500.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert attrs(s500)["error.type"] == "502"
    assert s404.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert "error.type" not in attrs(s404)


def test_invalid_and_unparseable_records_are_exported_flagged(pipeline) -> None:
    anon, garbage = export(
        pipeline,
        orjson.dumps({**LINE, "user_id": "", "body_bytes_sent": "100000"}).decode(),
        "this is not json",
    )
    assert attrs(anon)["audit.valid"] is False
    assert attrs(anon)["audit.violations"] == ["missing_field:user_id"]
    g = attrs(garbage)
    assert "malformed" in g["audit.flags"] and g["audit.trace_id.generated"] is True
    assert garbage.end_time_unix_nano == 42  # no time in the record: receive time


def test_replaying_gives_identical_spans(pipeline) -> None:
    body = orjson.dumps({**LINE, "request_id": "not-hex"}).decode()
    first = export(pipeline, body)[0].SerializeToString()
    again = export(Pipeline(pipeline._settings), body)[0].SerializeToString()
    assert first == again


def test_span_bytes_equal_what_the_stubs_would_write(pipeline) -> None:
    """The hand-assembled bytes re-serialize identically through the official stubs."""
    bodies = [orjson.dumps({**LINE, "status": str(s)}).decode() for s in (200, 503)]
    req = ExportLogsServiceRequest()
    scope = req.resource_logs.add().scope_logs.add()
    for body in bodies + ["garbage", '{"uri":"/v1/x","request_id":"abc","http_traceparent":'
                          '"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}']:
        scope.log_records.add().body.string_value = body
    payload, _ = pipeline.process_logs(req, now_ns=42)
    decoded = ExportTraceServiceRequest.FromString(payload)
    assert decoded.SerializeToString() == payload
    spans = decoded.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 4
    assert spans[3].parent_span_id.hex() == "b7ad6b7169203331"
    assert decoded.resource_spans[0].scope_spans[0].scope.name == "audit-guard"


def test_no_records_no_request(pipeline) -> None:
    assert pipeline.process_logs(ExportLogsServiceRequest(), now_ns=1) == (b"", 0)


def test_records_from_collector_attributes(pipeline) -> None:
    """The collector may have parsed the JSON into attributes and left the body empty."""
    req = ExportLogsServiceRequest()
    lr = req.resource_logs.add().scope_logs.add().log_records.add()
    for key, value in LINE.items():
        kv = lr.attributes.add()
        kv.key = key
        kv.value.string_value = value
    kv = lr.attributes.add()
    kv.key, kv.value.string_value = "log.file.name", "access.log"
    ((rec,),) = [b.rows() for b in pipeline.records_from_logs(req)]
    assert (rec.method, rec.status, rec.user_id) == ("GET", 200, "u1")
    assert "log.file.name" not in rec.fields


def _source_request(source: str, *bodies: str, times: list[int] | None = None,
                    partial: set[int] | None = None) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    kv = rl.resource.attributes.add()
    kv.key, kv.value.string_value = "audit.source", source
    scope = rl.scope_logs.add()
    for i, body in enumerate(bodies):
        lr = scope.log_records.add()
        lr.body.string_value = body
        if times:
            lr.time_unix_nano = times[i]
        if partial and i in partial:
            a = lr.attributes.add()
            a.key, a.value.bool_value = "audit.partial", True
    return req


def _spans_by_service(pipeline, req) -> dict[str, list[Span]]:
    payload, _ = pipeline.process_logs(req, now_ns=42)
    out = {}
    for rs in ExportTraceServiceRequest.FromString(payload).resource_spans:
        service = rs.resource.attributes[0].value.string_value
        out[service] = list(rs.scope_spans[0].spans)
    return out


def test_pgaudit_statement_is_a_client_span_under_the_app_span(pipeline) -> None:
    entry = ("2025-11-26 14:00:01.250 UTC [4242] app@dify LOG:  AUDIT: SESSION,7,1,WRITE,UPDATE,"
             "TABLE,public.datasets,\"UPDATE datasets SET name = 'a, b' WHERE id = 3 "
             "/*traceparent='00-" + RID + "-00f067aa0ba902b7-01'*/\",<none>")
    (span,) = _spans_by_service(pipeline, _source_request("pgaudit", entry))["postgresql"]
    assert span.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert span.name == "UPDATE public.datasets"
    assert span.trace_id.hex() == RID and span.parent_span_id.hex() == "00f067aa0ba902b7"
    a = attrs(span)
    assert a["db.system.name"] == "postgresql" and a["db.operation.name"] == "UPDATE"
    assert a["db.collection.name"] == "public.datasets" and "WHERE id = 3" in a["db.query.text"]
    assert a["user.id"] == "app" and a["audit.valid"] is True


def test_app_record_from_a_container_is_a_child_span_with_its_lag(pipeline) -> None:
    logged_ns = 1764165601_000_000_000
    line = orjson.dumps({
        "ts": "2025-11-26T14:00:01.000Z", "severity": "INFO", "service": "api",
        "caller": "ext_request_logging.py:80", "trace_id": RID,
        "message": f"POST /v1/chat-messages 200 12.5 {RID}",
        "identity": {"tenant_id": "t1", "user_id": "u1", "user_type": "end_user"},
        "attributes": {"app_id": "a1"},
    }).decode()
    # read by Docker 0.25 s and 9 s after it was written (the collector's record timestamp);
    # the third line's 16 KiB pieces never completed
    req = _source_request("app", line, line.replace("12.5", "13.5"), line.replace("12.5", "1.0"),
                          times=[logged_ns + 250_000_000, logged_ns + 9 * 10**9, logged_ns],
                          partial={2})
    spans = _spans_by_service(pipeline, req)["app"]
    assert [s.kind for s in spans] == [Span.SpanKind.SPAN_KIND_SERVER] * 3
    assert all(s.trace_id.hex() == RID and s.parent_span_id.hex() == RID[:16] for s in spans)
    assert len({s.span_id for s in spans}) == 3  # three records of one request: three spans
    first, late, cut = map(attrs, spans)
    assert first["audit.ingest_lag_ms"] == 250 and "audit.flags" not in first
    assert (first["user.id"], first["app.id"], first["http.route"]) == (
        "u1", "a1", "/v1/chat-messages")
    assert late["audit.flags"] == ["delayed"] and late["audit.ingest_lag_ms"] == 9000
    assert cut["audit.flags"] == ["truncated:partial_line"]


def test_a_plain_app_log_read_late_is_not_delayed(pipeline) -> None:
    """A plain file carries no runtime time: the collector's read time is when the pipeline got
    to it (a backlog after a first start or an outage), not when the app's write reached the
    log. Reading it minutes late must not flag `delayed`."""
    line = orjson.dumps({"ts": "2025-11-26T14:00:01.000Z", "severity": "INFO", "trace_id": RID,
                         "message": "audit", "user_id": "u1", "path": "/v1/chat-messages",
                         "method": "POST", "status": 200}).decode()
    req = _source_request("app", line)
    req.resource_logs[0].scope_logs[0].log_records[0].observed_time_unix_nano = (
        1764165601_000_000_000 + 600 * 10**9)
    (span,) = _spans_by_service(pipeline, req)["app"]
    assert "delayed" not in attrs(span).get("audit.flags", [])
    assert "audit.ingest_lag_ms" not in attrs(span)


def test_same_record_twice_is_flagged_duplicate_once_exported(pipeline) -> None:
    body = orjson.dumps(LINE).decode()
    other = orjson.dumps({**LINE, "request_id": "b" * 32}).decode()
    first = export(pipeline, body)
    again = export(pipeline, other, body)  # e.g. re-read after lost offsets, with a new line
    assert attrs(first[0])["audit.flags"] == ["truncated:response_short"]
    assert attrs(again[1])["audit.flags"] == ["truncated:response_short", "duplicate"]
    assert again[1].span_id != first[0].span_id and again[1].trace_id == first[0].trace_id
    # The third sighting gets an id of its own; each sighting keeps its id when resent.
    third = export(pipeline, body, other)
    assert len({first[0].span_id, again[1].span_id, third[0].span_id}) == 3
    assert [s.SerializeToString() for s in export(pipeline, other, body)] == [
        s.SerializeToString() for s in again]


def test_a_retried_request_gives_the_same_spans(pipeline) -> None:
    """The collector resends a request it got no answer for (or that was answered UNAVAILABLE
    after a hand-off failure): the same records, in the same request, are not duplicates."""
    bodies = [orjson.dumps({**LINE, "request_id": f"{i:032x}"}).decode() for i in range(3)]
    bodies.append(bodies[0])  # a line really written twice: a duplicate, every time
    first = export(pipeline, *bodies)
    again = export(pipeline, *bodies)
    assert [s.SerializeToString() for s in again] == [s.SerializeToString() for s in first]
    assert [attrs(s)["audit.flags"][-1] for s in first] == [
        "truncated:response_short"] * 3 + ["duplicate"]


def test_a_line_read_again_is_the_same_record_a_line_written_twice_is_not(pipeline) -> None:
    """A collector killed before it saved its read offsets reads its last lines again, composed
    into other requests: by their file offsets they are the same records (identical spans). The
    same text at another offset was written twice: a duplicate, with the same id every time."""
    bodies = [orjson.dumps({**LINE, "request_id": f"{i:032x}"}).decode() for i in range(4)]
    bodies.append(bodies[1])  # written twice
    offsets = [i * 1000 for i in range(5)]
    first = export(pipeline, *bodies[:3], offsets=offsets[:3])
    first += export(pipeline, *bodies[3:], offsets=offsets[3:])
    # Re-read from offset 1000 on, after a crash, as one request.
    again = export(pipeline, *bodies[1:], offsets=offsets[1:])
    assert [s.SerializeToString() for s in again] == [s.SerializeToString() for s in first[1:]]
    assert "duplicate" not in attrs(first[3])["audit.flags"]
    assert attrs(first[4])["audit.flags"][-1] == "duplicate"
    assert first[4].span_id != first[1].span_id
    # Without offsets (another sender) a differently composed request is a duplicate.
    assert attrs(export(pipeline, bodies[2], bodies[3])[0])["audit.flags"][-1] == "duplicate"


def test_records_read_again_are_not_counted_twice_by_the_counter_check() -> None:
    from audit_guard.correlate.counters import served_by_host
    from audit_guard.pipeline import NGINX

    pipeline = Pipeline(load_settings())
    bodies = [orjson.dumps({**LINE, "request_id": f"{i:032x}"}).decode() for i in range(3)]
    export(pipeline, *bodies[:2], offsets=[0, 100])
    export(pipeline, *bodies, offsets=[0, 100, 200])
    assert pipeline.again == [0, 1]
    served: dict = {}
    rows = pipeline.group_logs(_offsets_request(bodies, [0, 100, 200]))[NGINX]
    batch = pipeline.check(pipeline.parse(NGINX, rows.bodies), b"", rows.offsets)
    served_by_host(batch, served, pipeline.again)
    assert sum(map(len, served.values())) == 0  # all three were seen before


def _offsets_request(bodies: list[str], offsets: list[int]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    scope = req.resource_logs.add().scope_logs.add()
    for body, offset in zip(bodies, offsets, strict=True):
        record = scope.log_records.add()
        record.body.string_value = body
        record.attributes.add(key="log.file.record_offset").value.int_value = offset
    return req


def test_hand_framed_string_attributes_equal_the_stubs_encoding() -> None:
    """encode_attribute frames string values by hand: byte for byte what the stubs write."""
    import random

    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from audit_guard.spans import encode_attribute

    rng = random.Random(5)
    alphabet = "abcXYZ09/-_.: \t\"\\é漢🙂\u0000\u007f"
    values = ["", "x", "a" * 127, "a" * 128, "b" * 16_383, "c" * 16_384, "é" * 70_000]
    values += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
               for _ in range(300)]
    for key in ("url.path", "k", "k" * 200, "ключ"):
        for value in values:
            expected = Span(attributes=[KeyValue(
                key=key, value=AnyValue(string_value=value))]).SerializeToString()
            assert encode_attribute(key, value) == expected, (key, value[:40])
    assert Span.FromString(encode_attribute("k", "a\udc80b")).attributes[0].value.string_value \
        == "a?b"


def test_the_attribute_cap_is_the_configured_one() -> None:
    pipeline = Pipeline(load_settings(max_attribute_bytes=1024))
    (span,) = export(pipeline, orjson.dumps({**LINE, "request_uri": "/v1/" + "x" * 5000}).decode())
    a = attrs(span)
    assert len(a["url.path"].encode()) <= 1024
    assert "truncated_attribute:url.path" in a["audit.flags"]


# -- the span builder's fast paths against the straightforward computation (hypothesis) -------
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TIMES = st.one_of(st.none(), st.integers(-(2**65), 2**65),
                   st.integers(0, 2**64 - 1), st.just(0), st.just(2**64 - 1))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rows=st.lists(st.tuples(_TIMES, st.integers(-(2**64), 2**64)), min_size=1, max_size=8),
       now=st.integers(0, 2**64 - 1))
def test_span_times_equal_the_per_row_rule(rows: list, now: int) -> None:
    """Span start/end: one C pass when every time is in range, the per-row rule otherwise."""
    from audit_guard.record import RecordBatch
    from audit_guard.spans import _span_times

    batch = RecordBatch("nginx", len(rows), time_unix_nano=[e for e, _ in rows],
                        duration_ns=[d for _, d in rows])
    expected_ends = [e if e is not None and 0 <= e <= 2**64 - 1 else now for e, _ in rows]
    expected_starts = [max(end - d, 0) for end, (_, d) in zip(expected_ends, rows, strict=True)]
    if min(d for _, d in rows) < 0:
        expected_starts = [min(s, e) for s, e in zip(expected_starts, expected_ends, strict=True)]
    assert _span_times(batch, now) == (expected_starts, expected_ends)


# No booleans: True == 1 as a dict key, so a cache that saw one answers the other (the same
# before the fast path; no column of the shipped sources mixes them).
_VALUES = st.one_of(st.none(), st.sampled_from(["GET", "/v1/x", "u1", "", "é"]),
                    st.text(max_size=5), st.integers(-3, 3),
                    st.text(min_size=30, max_size=40))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(columns=st.lists(st.lists(_VALUES, max_size=10), min_size=1, max_size=6),
       max_entries=st.integers(1, 8))
@example(columns=[["u1", "é" * 60], ["u1"]], max_entries=8)  # a cut value, then all hits
def test_attribute_cache_columns_equal_encoding_each_value(columns: list, max_entries: int
                                                           ) -> None:
    """KeyCache.column (all-hit fast path, misses, a full cache cleared, values over the cap
    never cached) gives what encoding each value alone gives, batch after batch."""
    from audit_guard.span_encoding import KeyCache, encode_attribute

    cache = KeyCache("k", max_entries=max_entries, max_bytes=100)
    for values in columns:
        out = cache.column(values)
        assert out == [b"" if v is None else encode_attribute("k", v, 100) for v in values]
        capped = [(i, len(v.encode("utf-8", "replace"))) for i, v in enumerate(values)
                  if isinstance(v, str) and len(v.encode("utf-8", "replace")) > 100]
        assert (cache.last_capped or []) == capped


@settings(max_examples=60, deadline=None, derandomize=True)
@given(sizes=st.lists(st.one_of(st.integers(0, 300), st.integers(16_000, 20_000)), max_size=6))
@example(sizes=[10, 16_383, 16_384, 0])  # the last 2-byte length, the first 3-byte one
def test_request_framing_equals_the_stubs_encoding(sizes: list[int]) -> None:
    """SpanBatch frames spans (tag + length, by table below 16 KiB) as the stubs do."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

    from audit_guard import __version__
    from audit_guard.spans import SCOPE_NAME, SpanBatch

    spans = [Span(name="x" * n) for n in sizes]
    batch = SpanBatch("nginx")
    batch.spans = [s.SerializeToString() for s in spans]
    expected = ExportTraceServiceRequest(resource_spans=[] if not spans else [ResourceSpans(
        resource=Resource(attributes=[KeyValue(key="service.name",
                                               value=AnyValue(string_value="nginx"))]),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name=SCOPE_NAME,
                                                           version=__version__),
                                spans=spans)],
    )])
    assert batch.request_bytes() == expected.SerializeToString()
