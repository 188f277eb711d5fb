"""Test doubles for OTLP peers, shared by the service tests.

`RecordingDownstream` is a real gRPC TraceService server on loopback standing in for the span
backend (Jaeger/the collector): it records what it receives and can fail on demand. The
end-to-end tests use the real programs instead.

`RecordingMetrics` is the same for metrics: a gRPC MetricsService on loopback recording what a
real collector's OTLP exporter sends it.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from audit_guard.decode import any_value_to_python
from demo.procs import free_port

__all__ = ["RecordingDownstream", "RecordingMetrics", "logs_request"]


class RecordingDownstream(trace_service_pb2_grpc.TraceServiceServicer):
    """Test double for the span backend: records requests, can fail on demand."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.fail_with: grpc.StatusCode | None = None
        self.reject = 0
        self.delay = 0.0
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    def Export(self, request, context):  # noqa: N802
        time.sleep(self.delay)
        if self.fail_with is not None:
            context.abort(self.fail_with, "test double failing on purpose")
        self.requests.append(request)
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if self.reject:
            resp.partial_success.rejected_spans = self.reject
            resp.partial_success.error_message = "test double rejects"
        return resp

    def spans(self) -> list:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans
                for s in ss.spans]


def logs_request(*bodies: str, source: str | None = None
                 ) -> logs_service_pb2.ExportLogsServiceRequest:
    """A logs request with these bodies; `source`: the resource attribute `audit.source`, as
    collector-config/ sets it (none: the processor reads them as Nginx access records)."""
    req = logs_service_pb2.ExportLogsServiceRequest()
    resource_logs = req.resource_logs.add()
    if source is not None:
        kv = resource_logs.resource.attributes.add()
        kv.key, kv.value.string_value = "audit.source", source
    scope = resource_logs.scope_logs.add()
    for body in bodies:
        scope.log_records.add().body.string_value = body
    return req


class RecordingMetrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Test double for an OTLP metrics backend: records every Export request it accepts.

    Not started on creation (like RecordingDownstream): `start()` / `stop()`, or use it as a
    context manager. `requests` is appended to from gRPC threads; read it via `snapshot()`.
    """

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def Export(self, request, context):  # noqa: N802
        with self._lock:
            self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def snapshot(self) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
        with self._lock:
            return list(self.requests)

    def start(self) -> RecordingMetrics:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0)

    def __enter__(self) -> RecordingMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def span_attributes(item) -> dict:  # noqa: ANN001 - a protobuf Span or LogRecord
    """A span's (or log record's) attributes as plain Python values (the processor's own
    decoding of an AnyValue: arrays as lists, maps as dicts)."""
    return {kv.key: any_value_to_python(kv.value) for kv in item.attributes}
