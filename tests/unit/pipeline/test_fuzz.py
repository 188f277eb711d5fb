"""Per-record isolation, proved by fuzzing: no value in any field of any source raises out of
the pipeline, in `serve` (Pipeline.process_logs) or in `replay`.

Property tests (hypothesis) over structure-aware mutations of real lines of every format
(tests/support/fuzz_corpus.py): each example goes through the service's pipeline as a collector
request
and through replay as a file, and must raise nothing, make exactly the records its lines hold,
decode as a valid ExportTraceServiceRequest, never need the pipeline's safety net
(`invalid_field:record`), and flag the values it cannot take. `make fuzz` (scripts/fuzz.py)
runs the same mutations over a million lines.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from functools import lru_cache
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import Settings, load_settings
from audit_guard.correlate.reconcile import RequestReconciler
from audit_guard.pipeline import Pipeline
from audit_guard.record import RecordBatch
from audit_guard.replay import replay
from audit_guard.spans import SpanBatch, SpanBuilder
from audit_guard.telemetry import BatchStats
from tests.support.fuzz_corpus import (
    FORMATS,
    SEEDS,
    logs_request_for,
    mutated_lines,
    run_replay,
    run_service,
    span_flags,
)
from tests.support.otlp_doubles import logs_request

NOW = 1764165600_000_000_000
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@lru_cache(maxsize=1)
def _settings() -> Settings:
    return load_settings()


def _attrs(span) -> dict:  # noqa: ANN001 - a protobuf Span
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


# -- every format, mutated: the service and replay -------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
@FUZZ
@given(rnd=st.randoms(use_true_random=False), count=st.integers(1, 40),
       as_bytes=st.booleans())
def test_service_never_raises(fmt: str, rnd: random.Random, count: int, as_bytes: bool) -> None:
    lines = mutated_lines(fmt, count, rnd, allow_huge=rnd.random() < 0.1)
    # The collector sends string bodies; a bytes body (another sender) carries the raw bytes.
    raw = frozenset(i for i in range(count) if as_bytes and i % 2)
    run_service(Pipeline(_settings()), fmt, lines, NOW, bytes_bodies=raw)


@pytest.mark.parametrize("fmt", list(FORMATS))
@FUZZ
@given(rnd=st.randoms(use_true_random=False), count=st.integers(1, 40))
def test_replay_never_raises(fmt: str, rnd: random.Random, count: int,
                             tmp_path_factory: pytest.TempPathFactory) -> None:
    lines = mutated_lines(fmt, count, rnd, allow_huge=rnd.random() < 0.1)
    run_replay(fmt, lines, tmp_path_factory.mktemp(fmt) / "fuzz.log", _settings())


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_reconciliation_armed_never_raises(rnd: random.Random) -> None:
    """With request reconciliation on (nginx and app records in one request), odd statuses and
    times reach the reconcile journal's packing too (status 70000 once raised there)."""
    pipeline = Pipeline(_settings(), reconciler=RequestReconciler(
        window_s=30, late_horizon_s=300, max_pending=10_000))
    nginx = mutated_lines("nginx_json", 30, rnd, allow_huge=False)
    app = mutated_lines("app_dify_json", 10, rnd, allow_huge=False)
    request = logs_request_for("nginx_json", nginx)
    request.resource_logs.extend(logs_request_for("app_dify_json", app).resource_logs)
    stats = BatchStats()
    payload, count = pipeline.process_logs(request, NOW, stats)
    spans = ExportTraceServiceRequest.FromString(payload)
    assert count == 40
    assert sum(len(ss.spans) for rs in spans.resource_spans for ss in rs.scope_spans) == 40
    assert len(stats.expected) <= 30


def test_deeply_nested_upstream_values_with_reconciliation(tmp_path: Path) -> None:
    """Found by make fuzz: an upstream_* value nested 1000 deep reached str() in the
    reconciliation's "did the app answer" rule, in serve and in replay."""
    line = _with("upstream_bytes_received", b"[" * 1000 + b"]" * 1000)
    app = SEEDS["app_dify_json"][0].decode()
    pipeline = Pipeline(_settings(), reconciler=RequestReconciler(
        window_s=30, late_horizon_s=300, max_pending=100))
    request = logs_request(line)
    request.resource_logs.extend(logs_request(app, source="app").resource_logs)
    payload, count = pipeline.process_logs(request, NOW, BatchStats())
    spans = [s for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert count == len(spans) == 2
    assert not any("invalid_field:record" in span_flags(s) for s in spans)
    access, app_log = tmp_path / "access.log", tmp_path / "app.log"
    access.write_text(line + "\n")
    app_log.write_text(app + "\n")
    out, err = io.BytesIO(), io.StringIO()
    assert replay([access, app_log], settings=_settings(), out=out, err=err) in (0, 1)
    assert len(out.getvalue().splitlines()) == 2


# -- bad values are flagged on their record, the rest of the batch is untouched ---------------

_SHIPPED = orjson.loads(SEEDS["nginx_json"][0])
# field → (bad JSON token, the flag it must give)
_OUT_OF_RANGE = {
    "status": ([b'"70000"', b"70000", b'"-1"', b"18446744073709551616", b'"abc"', b"{}"],
               "invalid_field:status"),
    "msec": ([b"-1", b"1e30", b"1e400", b'"NaN"', b"-0.001", b"9223372037", b"[1]"],
             "invalid_field:time"),
    "body_bytes_sent": ([b"-1", b"9223372036854775808", b"1" + b"0" * 30, b'"x"', b"1e400"],
                        "invalid_field:body_bytes_sent"),
    "request_time": ([b"-5", b"1e300", b"2592001", b'"soon"'], "invalid_field:duration"),
    "sent_http_content_length": ([b'"99999999999999999999"', b'"-3"'],
                                 "invalid_field:content_length"),
    "request_id": ([b'"' + b"a" * 300 + b'"', b'"a\\u0000b"', b'{"x":1}'],
                   "invalid_field:request_id"),
    "user_id": ([b'{"id":1}', b"[" * 600 + b"]" * 600], "invalid_field:user_id"),
}


def _with(field: str, token: bytes) -> str:
    hole = "\x00hole\x00"
    return orjson.dumps({**_SHIPPED, field: hole}).replace(orjson.dumps(hole), token).decode()


@pytest.mark.parametrize(("field", "token", "flag"), [
    (field, token, flag) for field, (tokens, flag) in _OUT_OF_RANGE.items() for token in tokens
])
def test_out_of_range_value_flags_its_record_only(field: str, token: bytes, flag: str) -> None:
    good = orjson.loads(SEEDS["nginx_json"][0])
    good_lines = [orjson.dumps({**good, "request_id": f"{i:032x}"}).decode() for i in range(1, 5)]
    lines = [*good_lines[:2], _with(field, token), *good_lines[2:]]
    payload, count = Pipeline(_settings()).process_logs(logs_request(*lines), NOW, BatchStats())
    spans = [s for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert count == len(spans) == 5
    assert flag in span_flags(spans[2])
    assert "invalid_field:record" not in span_flags(spans[2])
    assert [span_flags(s) for i, s in enumerate(spans) if i != 2] == [[]] * 4


@pytest.mark.parametrize("year_line", [
    '{"time_iso8601":"0001-01-01T00:00:00+00:00","msec":"","status":"200","uri":"/"}',
    '{"time_iso8601":"9999-12-31T23:59:59+00:00","msec":"","status":"200","uri":"/"}',
    '{"time":"26/Nov/0001:00:00:00 +0000","status":"200","uri":"/"}',
])
def test_years_0001_and_9999_are_invalid_times(year_line: str) -> None:
    payload, _ = Pipeline(_settings()).process_logs(logs_request(year_line), NOW, BatchStats())
    (span,) = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    assert "invalid_field:time" in span_flags(span)
    assert span.end_time_unix_nano == NOW  # no time: the receive time, as for a missing one


def test_app_and_pgaudit_out_of_range_values_are_flagged() -> None:
    app_line = json.dumps({"time": "2025-11-26T14:00:00Z", "path": "/x", "method": "GET",
                           "status": 99999999999999999999, "duration_ms": -4,
                           "request_id": "r" * 400})
    payload, _ = Pipeline(_settings()).process_logs(logs_request(app_line, source="app"), NOW,
                                                    BatchStats())
    (span,) = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    assert {"invalid_field:status", "invalid_field:duration",
            "invalid_field:request_id"} <= set(span_flags(span))
    pg = ("9999-11-26 15:00:00.000 UTC [9] alice@shop LOG:  AUDIT: SESSION,"
          "99999999999999999999,1,READ,SELECT,,,SELECT 1,<none>,123456789012345678901234")
    payload, _ = Pipeline(_settings()).process_logs(logs_request(pg, source="pgaudit"), NOW,
                                                    BatchStats())
    (span,) = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    assert {"invalid_field:time", "invalid_field:rows", "malformed"} <= set(span_flags(span))


# -- span building itself -------------------------------------------------------------------


def test_span_building_never_raises_on_odd_values() -> None:
    """Whatever a record holds (not only what the sources let through): times and durations
    out of range, ints beyond int64, lone surrogates, NUL."""
    n = 6
    batch = RecordBatch(
        "app", n,
        time_unix_nano=[-1, 2**64, 2**70, None, 0, NOW],
        duration_ns=[-5, 2**65, 0, -(2**70), 10, 1],
        method=["GET", "\ud800", "A\x00B", None, "é" * 10, "POST"],
        path=["/\udfff", "/\x00", None, "/ok", "/" + "\ud83d", "/x"],
        status=[2**70, -1, 70000, None, 200, -(2**64)],
        body_bytes_sent=[2**64, -(2**63) - 1, None, 0, 1, 2],
        user_id=["\ud800\udc00", "u\x00", None, "u", "u", "u"],
        name=[None, "\udfff name", None, None, "x" * 20_000, None],
        attributes=[{"big": 2**80, "neg": -(2**90), "s": "\ud800", "f": float("nan")}, None,
                    {"\udc80key": "v"}, None, {"ok": True}, {"inf": float("inf")}],
        events=[[(-1, "ev\ud800", {"a": 2**70, "b": "\udfff"})], None,
                [(2**70, "late", {})], None, None, None],
        observed_time_unix_nano=[2**63 - 1, None, 5, None, NOW, NOW],
    )
    batch.violations[0] = ["invalid_field:\ud800"]
    batch.add_flag(0, "rule:\udfff")
    batch.truncation_reasons[1] = ["json_cut"]
    builder = SpanBuilder()
    spans = SpanBatch("app")
    spans.spans = builder.spans(batch, NOW)
    decoded = ExportTraceServiceRequest.FromString(spans.request_bytes())
    out = decoded.resource_spans[0].scope_spans[0].spans
    assert len(out) == n
    for span in out:
        assert span.start_time_unix_nano <= span.end_time_unix_nano
    assert _attrs(out[0])["big"] == str(2**80)
    assert out[1].end_time_unix_nano == NOW  # 2**64 does not fit: "now"


# -- the attribute cap -------------------------------------------------------------------------


def test_a_ten_megabyte_path_does_not_make_a_ten_megabyte_span() -> None:
    path = "/v1/" + "é" * 5_000_000 + "x"  # 10 MB of two-byte characters
    line = orjson.dumps({**_SHIPPED, "request_uri": path, "uri": path}).decode()
    pipeline = Pipeline(_settings())
    payload, _ = pipeline.process_logs(logs_request(line, line.replace("u-42", "u-43")), NOW,
                                       BatchStats())
    spans = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    cap = pipeline.span_builder.max_attribute_bytes
    assert cap == _settings().max_attribute_bytes == 8192
    for span in spans:
        assert span.ByteSize() < 3 * cap
        attrs = _attrs(span)
        cut = attrs["url.path"]
        assert path.startswith(cut) and cap - 1 <= len(cut.encode()) <= cap  # whole characters
        assert "truncated_attribute:url.path" in attrs["audit.flags"]
        assert attrs["audit.attribute_truncated"] == ["url.path"]
        assert attrs["audit.attribute_original_bytes"] == [len(path.encode())]
        assert len(span.name.encode()) <= cap


def test_the_cap_is_configurable_and_short_values_are_untouched() -> None:
    builder = SpanBuilder(max_attribute_bytes=256)
    batch = RecordBatch("nginx", 2, method=["GET", "GET"], path=["/short", "/" + "a" * 300],
                        user_agent=["curl", "b" * 257], status=[200, 200],
                        time_unix_nano=[NOW, NOW])
    spans = SpanBatch("nginx")
    spans.spans = builder.spans(batch, NOW)
    short, long = ExportTraceServiceRequest.FromString(
        spans.request_bytes()).resource_spans[0].scope_spans[0].spans
    assert _attrs(short)["url.path"] == "/short" and "audit.flags" not in _attrs(short)
    attrs = _attrs(long)
    assert len(attrs["url.path"]) == len(attrs["user_agent.original"]) == 256
    assert attrs["audit.attribute_truncated"] == ["url.path", "user_agent.original"]
    assert attrs["audit.attribute_original_bytes"] == [301, 257]
    assert batch.flags[1] == ["truncated_attribute:url.path",
                              "truncated_attribute:user_agent.original"]


# -- replay: bad input is never a traceback ----------------------------------------------------


def test_replay_names_an_unreadable_file_and_replays_the_others(tmp_path: Path) -> None:
    good = tmp_path / "access.log"
    good.write_bytes(SEEDS["nginx_json"][0] + b"\n")
    corrupt = tmp_path / "access.log.2.gz"
    corrupt.write_bytes(gzip.compress(SEEDS["nginx_json"][0] * 50)[:-30] + b"garbage" * 20)
    missing = tmp_path / "gone.log"
    out, err = io.BytesIO(), io.StringIO()
    code = replay([missing, corrupt, good], source="nginx", settings=_settings(), out=out,
                  err=err)
    assert code == 2
    assert f"cannot read {missing}: no such file" in err.getvalue()
    assert f"cannot read {corrupt}" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    files = [orjson.loads(line)["file"] for line in out.getvalue().splitlines()]
    assert files.count(str(good)) == 1  # the good file is replayed in full
