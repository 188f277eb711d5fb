"""Redaction before export (issue #13): with default settings a password in SQL and a token in
a query string appear nowhere in the exported spans or replay's output; identity fields can be
dropped, masked or pseudonymised (keyed: stable across restarts and instances); flags are
computed before redaction."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from audit_guard.redaction import scrub
from audit_guard.replay import replay
from tests.support.otlp_doubles import logs_request

SECRET = "hunter2-S3cr3t"
RID = "4bf92f3577b34da6a3ce929d0e0e4736"
PGAUDIT = ("2025-11-26 14:00:01.250 UTC [4242] app@dify LOG:  AUDIT: SESSION,1,1,ROLE,"
           f"ALTER ROLE,,,ALTER ROLE app WITH PASSWORD '{SECRET}',<none>")
APP = orjson.dumps({"ts": "2025-11-26T14:00:01.000Z", "severity": "INFO", "service": "api",
                    "caller": "ext_request_logging.py:80", "trace_id": RID,
                    "message": f"GET /v1/files/export?token={SECRET}&format=csv 200 12.5 {RID}",
                    "identity": {"tenant_id": "t1", "user_id": "alice",
                                 "user_type": "end_user"},
                    "attributes": {"app_id": "a1"}}).decode()
ERROR = ("2025/11/26 14:00:02 [error] 7#7: *9 upstream prematurely closed connection while "
         f'reading upstream, client: 10.0.0.1, server: _, request: "GET /v1/x?api_key={SECRET} '
         'HTTP/1.1", upstream: "http://127.0.0.1:5001/v1/x", host: "h"')


def spans_bytes(pipeline: Pipeline, *requests) -> bytes:
    out = b""
    for request in requests:
        payload, _ = pipeline.process_logs(request, now_ns=1764165700_000_000_000)
        out += payload
    return out


def test_secrets_are_scrubbed_from_spans_by_default() -> None:
    pipeline = Pipeline(load_settings(error_join_window_s=1))
    exported = spans_bytes(pipeline, logs_request(PGAUDIT, source="pgaudit"),
                           logs_request(APP, source="app"),
                           logs_request(ERROR, source="nginx_error"))
    spans = [s for rs in ExportTraceServiceRequest.FromString(exported).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) >= 2
    assert SECRET.encode() not in exported
    assert b"PASSWORD '***'" in exported


def test_secrets_are_scrubbed_from_replay_output(tmp_path: Path) -> None:
    pg, app = tmp_path / "postgresql.log", tmp_path / "app.log"
    pg.write_text(PGAUDIT + "\n")
    app.write_text(APP + "\n")
    out, err = io.BytesIO(), io.StringIO()
    replay([pg, app], settings=load_settings(), out=out, err=err)
    assert out.getvalue() and SECRET.encode() not in out.getvalue()
    assert "PASSWORD '***'" in out.getvalue().decode()


def test_span_events_are_scrubbed_too() -> None:
    from audit_guard.config import load_settings as settings
    from audit_guard.record import RecordBatch
    from audit_guard.redaction import Redactor

    batch = RecordBatch("nginx", 1, events=[[(1, "nginx.error", {
        "message": f"upstream sent token={SECRET} while reading upstream"})]])
    Redactor(settings().redaction)(batch)
    assert SECRET not in str(batch.events)


def test_scrub_keeps_what_is_not_a_secret() -> None:
    assert scrub("/v1/datasets/42/documents?page=2&limit=20") == \
        "/v1/datasets/42/documents?page=2&limit=20"
    assert scrub("monkey=1&keyboard=2") == "monkey=1&keyboard=2"
    assert scrub("host=db password='p w' user=u") == "host=db password=*** user=u"
    assert scrub("Authorization: Bearer eyJhbGciOi.x-y_z") == "Authorization: Bearer ***"


def _user_ids(settings_kw: dict) -> tuple[list[str], list[list[str]]]:
    pipeline = Pipeline(load_settings(**settings_kw))
    (batch,) = pipeline.records_from_logs(logs_request(APP, APP.replace("alice", "bob"),
                                                       source="app"))
    return batch.user_id, [batch.flags.get(i, []) for i in range(len(batch))]


def test_identity_fields_dropped_masked_or_pseudonymised(tmp_path: Path) -> None:
    key, other = tmp_path / "key", tmp_path / "other"
    key.write_text("k" * 32)
    other.write_text("o" * 32)
    plain, plain_flags = _user_ids({})
    assert plain == ["alice", "bob"]
    pseudo = {"redaction": {"fields": {"user_id": "pseudonym"}, "pseudonym_key_file": str(key)}}
    first, flags = _user_ids(pseudo)
    again, _ = _user_ids(pseudo)  # a restart, another instance with the same key
    assert first == again and first[0] != first[1] and first[0].startswith("ps_")
    assert "alice" not in first[0]
    assert flags == plain_flags  # flags computed before redaction
    rekeyed, _ = _user_ids({"redaction": {"fields": {"user_id": "pseudonym"},
                                          "pseudonym_key_file": str(other)}})
    assert rekeyed[0] != first[0]
    assert _user_ids({"redaction": {"fields": {"user_id": "drop"}}})[0] == [None, None]
    assert _user_ids({"redaction": {"fields": {"user_id": "mask"}}})[0] == ["***", "***"]


def test_a_pseudonym_without_a_key_fails_at_start() -> None:
    import pytest

    from audit_guard.config import ConfigError

    with pytest.raises(ConfigError, match="redaction.pseudonym_key_file"):
        load_settings(redaction={"fields": {"user_id": "pseudonym"}})
