"""Validation, truncation and trace-id rules on single records."""

from __future__ import annotations

import orjson

from audit_guard.correlate.traces import assign_ids, parse_traceparent
from audit_guard.record import AuditRecord, RecordBatch
from audit_guard.sources.nginx_access import parse_line, parse_mapping

RID = "4bf92f3577b34da6a3ce929d0e0e4736"
BASE = {
    "msec": "1764165600.000",
    "request_id": RID,
    "request_method": "POST",
    "uri": "/v1/chat-messages",
    "status": "200",
    "user_id": "u1",
    "app_id": "a1",
    "request_completion": "OK",
    "body_bytes_sent": "100",
    "sent_http_content_length": "100",
    "upstream_response_length": "100",
}


def with_ids(rec: AuditRecord) -> AuditRecord:
    batch = RecordBatch.from_records(rec.source, [rec])
    assign_ids(batch)
    return batch.row(0)


def checked(pipeline, **changes):
    return pipeline.check_one(parse_mapping({**BASE, **changes}))


def test_clean_record_has_no_flags(pipeline) -> None:
    rec = checked(pipeline)
    assert rec.flags == [] and rec.violations == []


def test_missing_user_on_audited_path(pipeline) -> None:
    rec = checked(pipeline, user_id="")
    assert rec.violations == ["missing_field:user_id"]
    assert "missing_field:user_id" in rec.flags


def test_identity_not_required_off_audited_paths(pipeline) -> None:
    rec = checked(pipeline, uri="/static/app.js", user_id="", app_id="")
    assert rec.violations == []


def test_identity_checked_in_every_batch(pipeline) -> None:
    """The validator remembers identity values it found valid; a bad one is flagged each time
    it comes, beside good ones seen before, and in either field."""
    long_id = "u" * 300
    for _ in range(2):
        assert checked(pipeline).violations == []
        assert checked(pipeline, user_id=long_id).violations == ["invalid_field:user_id"]
        assert checked(pipeline, app_id="a\x00b").violations == ["invalid_field:app_id"]
        assert checked(pipeline, user_id="a1").violations == []  # valid as an app id too


def test_invalid_fields(pipeline) -> None:
    rec = checked(pipeline, status="700", request_method="get me", uri="v1/x", msec="soon")
    assert set(rec.violations) == {
        "invalid_field:status",
        "invalid_field:method",
        "invalid_field:path",
        "invalid_field:time",
    }


def test_missing_status_and_time(pipeline) -> None:
    record = {k: v for k, v in BASE.items() if k not in ("status", "msec")}
    rec = pipeline.check_one(parse_mapping(record))
    assert {"missing_field:status", "missing_field:time"} <= set(rec.violations)


def test_request_incomplete(pipeline) -> None:
    rec = checked(pipeline, request_completion="")
    assert rec.truncation_reasons == ["request_incomplete"]
    assert "truncated:request_incomplete" in rec.flags


def test_no_request_completion_key_proves_nothing(pipeline) -> None:
    record = {k: v for k, v in BASE.items() if k != "request_completion"}
    rec = pipeline.check_one(parse_mapping(record))
    assert rec.truncation_reasons == []


def test_response_short_against_content_length(pipeline) -> None:
    rec = checked(pipeline, body_bytes_sent="30000", sent_http_content_length="100000",
                  upstream_response_length="30000")
    assert rec.truncation_reasons == ["response_short"]


def test_response_short_against_upstream_length(pipeline) -> None:
    rec = checked(pipeline, body_bytes_sent="10", sent_http_content_length="",
                  upstream_response_length="500")
    assert rec.truncation_reasons == ["response_short"]


def test_compressed_and_bodyless_responses_are_not_short(pipeline) -> None:
    assert checked(pipeline, body_bytes_sent="10", sent_http_content_length="",
                   upstream_response_length="500", gzip_ratio="5.0").truncation_reasons == []
    assert checked(pipeline, request_method="HEAD", body_bytes_sent="0").truncation_reasons == []
    assert checked(pipeline, status="304", body_bytes_sent="0").truncation_reasons == []


def test_trace_id_is_request_id_and_span_id_matches_nginx_snippet() -> None:
    rec = parse_mapping(BASE)
    rec = with_ids(rec)
    assert rec.trace_id.hex() == RID
    # otel/nginx/audit_location.conf sends traceparent 00-$request_id-<first 16 hex>-01
    assert rec.span_id.hex() == RID[:16]
    assert rec.parent_span_id == b""


def test_trace_id_from_traceparent_when_request_id_is_not_hex() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    rec = parse_mapping({**BASE, "request_id": "req-42", "http_traceparent": tp})
    rec = with_ids(rec)
    assert rec.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert rec.parent_span_id.hex() == "b7ad6b7169203331"
    assert len(rec.span_id) == 8 and rec.span_id.hex() != "b7ad6b7169203331"


def test_trace_id_hash_of_request_id_is_stable() -> None:
    a = parse_mapping({**BASE, "request_id": "req-42"})
    b = parse_mapping({**BASE, "request_id": "req-42"})
    a = with_ids(a)
    b = with_ids(b)
    assert a.trace_id == b.trace_id and len(a.trace_id) == 16 and not a.trace_id_generated
    assert a.span_id == b.span_id


def test_generated_trace_id_is_flagged_and_deterministic() -> None:
    line = orjson.dumps({k: v for k, v in BASE.items() if k != "request_id"})
    a, b = parse_line(line), parse_line(line)
    a = with_ids(a)
    b = with_ids(b)
    assert a.trace_id_generated and a.trace_id == b.trace_id and a.span_id == b.span_id


def test_invalid_traceparents_are_ignored() -> None:
    assert parse_traceparent("00-" + "0" * 32 + "-b7ad6b7169203331-01") is None
    assert parse_traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") is None
    assert parse_traceparent("garbage") is None
