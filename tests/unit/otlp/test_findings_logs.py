"""Findings as OTLP log records (audit_guard.audit_logs): one log record per span with the span's
ids, flags and attributes; the logs output through the exporter's one retry loop (LogsService);
an Export acknowledged only when every configured output took it.

The backends are test doubles on loopback (real gRPC servers): RecordingDownstream for spans and
RecordingLogs below for log records; the real collector is in tests/e2e/test_findings_logs_e2e.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.audit_logs import FindingsExporter, logs_from_spans
from audit_guard.config import ConfigError, load_settings
from audit_guard.config_otlp import LogsExporterConfig
from audit_guard.handoff import DownstreamRejected, DownstreamUnavailable
from audit_guard.otlp.exporter import SpanExporter
from audit_guard.pipeline import Pipeline
from demo.procs import free_port
from tests.support.otlp_doubles import RecordingDownstream, logs_request, span_attributes

NOW = 1_764_165_600 * 1_000_000_000


class RecordingLogs(logs_service_pb2_grpc.LogsServiceServicer):
    """Test double for a logs backend (the collector's otlp/egress): records what it accepts,
    fails on demand."""

    def __init__(self) -> None:
        self.requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.fail_with: grpc.StatusCode | None = None
        self.reject = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        if self.fail_with is not None:
            context.abort(self.fail_with, "test double failing on purpose")
        with self.lock:
            self.requests.append(request)
        response = logs_service_pb2.ExportLogsServiceResponse()
        response.partial_success.rejected_log_records = self.reject
        return response

    def records(self) -> list[Any]:
        return [r for q in self.requests for rl in q.resource_logs for sl in rl.scope_logs
                for r in sl.log_records]


@pytest.fixture
def logs_backend() -> Iterator[RecordingLogs]:
    backend = RecordingLogs()
    backend.server.start()
    yield backend
    backend.server.stop(None)


@pytest.fixture
def spans_backend() -> Iterator[RecordingDownstream]:
    backend = RecordingDownstream()
    backend.server.start()
    yield backend
    backend.server.stop(None)


def traces() -> tuple[bytes, int]:
    """Real spans: nginx records, one clean, one without a user (flagged), one 403 dataset."""
    lines = [
        json.dumps({"msec": "1764165600.100", "request_id": f"{n:032x}", "request_method": "GET",
                    "request_uri": path, "status": str(status), "user_id": user, "app_id": "a1",
                    "request_completion": "OK"})
        for n, path, status, user in ((1, "/v1/parameters", 200, "u1"),
                                      (2, "/v1/parameters", 200, ""),
                                      (3, "/v1/datasets/d1", 403, "u1"))]
    return Pipeline(load_settings()).process_logs(logs_request(*lines), NOW)


def test_one_log_record_per_span_with_its_ids_flags_and_attributes() -> None:
    payload, count = traces()
    spans = ExportTraceServiceRequest.FromString(payload)
    logs_bytes, n = logs_from_spans(payload)
    logs = logs_service_pb2.ExportLogsServiceRequest.FromString(logs_bytes)
    assert n == count == 3
    flat_spans = [(rs.resource, s) for rs in spans.resource_spans for ss in rs.scope_spans
                  for s in ss.spans]
    flat_logs = [(rl.resource, r) for rl in logs.resource_logs for sl in rl.scope_logs
                 for r in sl.log_records]
    assert len(flat_logs) == 3
    for (span_resource, span), (log_resource, record) in zip(flat_spans, flat_logs, strict=True):
        assert log_resource == span_resource
        assert (record.trace_id, record.span_id) == (span.trace_id, span.span_id)
        assert record.time_unix_nano == span.end_time_unix_nano
        assert record.body.string_value == span.name
        assert record.event_name == "audit.record"
        extra = span_attributes(record)
        assert extra.pop("audit.duration_ns") == span.end_time_unix_nano - span.start_time_unix_nano
        assert extra == span_attributes(span)
        flagged = bool(extra.get("audit.flags"))
        assert record.severity_text == ("WARN" if flagged else "INFO")
    flags = [span_attributes(r).get("audit.flags", []) for _, r in flat_logs]
    assert flags[0] == [] and "rule:unknown_user" in flags[1]
    assert "rule:dataset_access_denied" in flags[2]
    assert logs_from_spans(payload) == (logs_bytes, 3)  # a retry sends the very same bytes


def _exporters(spans: RecordingDownstream, logs: RecordingLogs, *, both: bool = True,
               **config: Any) -> FindingsExporter:
    settings = load_settings()
    span_exporter = SpanExporter(settings.exporter.model_copy(
        update={"endpoint": f"127.0.0.1:{spans.port}", "max_wait_s": 1.0}))
    log_exporter = SpanExporter(LogsExporterConfig(
        endpoint=f"127.0.0.1:{logs.port}", max_wait_s=1.0, retry_initial_backoff_s=0.05,
        **config), logs=True)
    return FindingsExporter(span_exporter, log_exporter, findings_as_spans=both)


def test_both_outputs_take_every_export(spans_backend: RecordingDownstream,
                                        logs_backend: RecordingLogs) -> None:
    payload, count = traces()
    exporter = _exporters(spans_backend, logs_backend)
    try:
        outcome = exporter.export(payload, count)
    finally:
        exporter.shutdown()
    assert outcome.accepted == 3
    assert len(spans_backend.spans()) == 3 and len(logs_backend.records()) == 3
    assert [r.span_id for r in logs_backend.records()] == [s.span_id for s in
                                                           spans_backend.spans()]


def test_logs_only_and_relayed_spans(spans_backend: RecordingDownstream,
                                     logs_backend: RecordingLogs) -> None:
    """output `logs`: findings go as log records only; spans an app sent to audit-guard's
    TraceService are not findings and still go to the trace backend as spans, never as logs."""
    payload, count = traces()
    exporter = _exporters(spans_backend, logs_backend, both=False)
    try:
        assert exporter.export(payload, count).accepted == 3
        assert spans_backend.spans() == []
        assert exporter.relay(payload, count).accepted == 3
    finally:
        exporter.shutdown()
    assert len(logs_backend.records()) == 3 and len(spans_backend.spans()) == 3


def test_a_logs_output_that_does_not_answer_fails_the_export(
        spans_backend: RecordingDownstream, logs_backend: RecordingLogs) -> None:
    """The spans went out, the logs did not: the Export must not be acknowledged (the receiver
    answers UNAVAILABLE, the collector re-sends, and both outputs get it again)."""
    logs_backend.fail_with = grpc.StatusCode.UNAVAILABLE
    payload, count = traces()
    exporter = _exporters(spans_backend, logs_backend)
    try:
        with pytest.raises(DownstreamUnavailable):
            exporter.export(payload, count)
        logs_backend.fail_with = None
        exporter.export(payload, count)  # the retry: both again, the same ids
    finally:
        exporter.shutdown()
    assert len(spans_backend.spans()) == 6
    assert len({s.span_id for s in spans_backend.spans()}) == 3
    assert len(logs_backend.records()) == 3


@pytest.mark.parametrize("refusal", ["code", "partial_success"])
def test_log_records_refused_for_good_are_never_acknowledged(
        spans_backend: RecordingDownstream, logs_backend: RecordingLogs, refusal: str) -> None:
    """No dead-letter spool for log records (it holds span requests for `resend`)."""
    if refusal == "code":
        logs_backend.fail_with = grpc.StatusCode.INVALID_ARGUMENT
    else:
        logs_backend.reject = 2
    payload, count = traces()
    exporter = _exporters(spans_backend, logs_backend, both=False)
    try:
        with pytest.raises(DownstreamRejected) as raised:
            exporter.export(payload, count)
    finally:
        exporter.shutdown()
    assert raised.value.spans == (3 if refusal == "code" else 2)


def test_the_output_setting() -> None:
    assert load_settings().findings.output == "spans"
    assert load_settings().findings.logs_exporter.endpoint == "127.0.0.1:4417"
    with pytest.raises(ConfigError, match="findings.output"):
        load_settings(findings={"output": "traces"})
    with pytest.raises(ValueError, match="no dead-letter spool"):
        SpanExporter(LogsExporterConfig(), spool=object(), logs=True)  # type: ignore[arg-type]
