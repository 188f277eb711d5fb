"""OTLP/gRPC receiver: LogsService, MetricsService and TraceService `Export`, plus gRPC health.

Ack rule: a logs Export answers OK only after every span it produced was accepted downstream or
put in the dead-letter spool, and the state it changed was written durably. Otherwise — downstream
unavailable or refusing, no spool, the state disk full, even a bug — it answers UNAVAILABLE with
RetryInfo, so the collector's persistent queue keeps the data, and undoes its state changes, so
the resent request gives the same spans. Nothing is acknowledged and dropped. Work in flight
is bounded by a semaphore; an Export that cannot get a slot soon gets UNAVAILABLE too
(backpressure, not memory growth). SIGTERM: stop taking new calls, finish those in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ..config import ServerConfig
from ..correlate.state import StateWriteError
from ..pipeline import Pipeline
from ..telemetry import BatchStats, Telemetry
from ..wire import LogsRequest, read_logs_request
from .exporter import DownstreamRejected, DownstreamUnavailable, ExportOutcome, SpanExporter
from .security import BearerTokenInterceptor, server_credentials

if TYPE_CHECKING:
    from ..completeness import Completeness

__all__ = ["OtlpServer"]

log = logging.getLogger(__name__)

_SERVICES = (
    "opentelemetry.proto.collector.logs.v1.LogsService",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "opentelemetry.proto.collector.trace.v1.TraceService",
)
_SLOT_WAIT_S = 1.0  # how long an Export waits for a free slot before answering UNAVAILABLE
_RETRY_AFTER_S = 1  # RetryInfo delay suggested to the collector
_ANSWER_MARGIN_S = 2.0  # answer this long before the caller's deadline
_LOCK_WAIT_S = 20.0  # without a caller deadline: how long an Export waits for the pipeline


def _unavailable(context: grpc.ServicerContext, message: str) -> None:
    detail = any_pb2.Any()
    delay = duration_pb2.Duration(seconds=_RETRY_AFTER_S)
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    context.abort_with_status(
        rpc_status.to_status(
            status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
        )
    )


class _Slots:
    """Bounded work in flight."""

    def __init__(self, size: int) -> None:
        self._sem = threading.BoundedSemaphore(size)

    def acquire(self) -> bool:
        return self._sem.acquire(timeout=_SLOT_WAIT_S)

    def release(self) -> None:
        self._sem.release()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, server: OtlpServer) -> None:
        self._s = server

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        s = self._s
        if not s.slots.acquire():
            s.telemetry.inc("audit_export_backpressure_total")
            _unavailable(context, "audit-guard is at its in-flight limit; retry later")
        try:
            failure = s.handle_logs(request, _deadline(context))
        finally:
            s.slots.release()
        if failure is not None:
            _unavailable(context, failure)
        return logs_service_pb2.ExportLogsServiceResponse()


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline (time.monotonic()), less a margin to answer in time."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e6:
        return None
    return time.monotonic() + max(remaining - _ANSWER_MARGIN_S, 0.1)


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    """The collector's scraped Nginx metrics: VTS request counters for reconciliation."""

    def __init__(self, server: OtlpServer) -> None:
        self._s = server

    def Export(self, request, context):  # noqa: N802
        points = sum(
            1
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for _ in sm.metrics
        )
        self._s.telemetry.inc("audit_metrics_received_total", points)
        if self._s.completeness is not None:
            self._s.completeness.on_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """Relays spans sent to audit-guard (e.g. by an instrumented app) downstream, same ack rule."""

    def __init__(self, server: OtlpServer) -> None:
        self._s = server

    def Export(self, request, context):  # noqa: N802
        s = self._s
        if not s.slots.acquire():
            _unavailable(context, "audit-guard is at its in-flight limit; retry later")
        try:
            count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            try:
                outcome = s.exporter.relay(request.SerializeToString(), count,
                                           _deadline(context))
            except (DownstreamUnavailable, DownstreamRejected) as exc:
                failure = f"spans not handed on, keep and retry: {exc}"
            else:
                failure = None
                s.count_outcome(outcome)
        finally:
            s.slots.release()
        if failure is not None:
            s.telemetry.inc("audit_export_unavailable_total")
            _unavailable(context, failure)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpServer:
    def __init__(
        self,
        config: ServerConfig,
        pipeline: Pipeline,
        exporter: SpanExporter,
        telemetry: Telemetry,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.exporter = exporter
        self.telemetry = telemetry
        self.slots = _Slots(config.max_inflight_requests)
        self.pipeline_lock = threading.Lock()
        # Admin hooks (set by `serve`): the findings of each handed-on Export, and whether each
        # hand-off downstream worked (True) or ended in UNAVAILABLE (False), for /readyz.
        self.on_handed_on: Callable[[BatchStats], None] | None = None
        self.on_export: Callable[[bool], None] | None = None
        # Reconciliation (set by `serve`): told every handed-on Export and the Nginx metrics.
        self.completeness: Completeness | None = None
        # Called once the calls in flight finished, before the exporter closes (integrity's
        # final digest).
        self.on_drained: Callable[[], None] | None = None
        # Threads beyond the in-flight limit only answer UNAVAILABLE (with RetryInfo: the client
        # retries) quickly. gRPC's own cap bounds the calls queued for a thread; past it gRPC
        # answers RESOURCE_EXHAUSTED itself, which clients do not retry — so it is set high.
        workers = config.max_inflight_requests + 4
        token = config.token()
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp"),
            interceptors=[BearerTokenInterceptor(token)] if token else None,
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
            ],
            maximum_concurrent_rpcs=workers + config.max_queued_requests,
        )
        # As logs_service_pb2_grpc registers it, but each request read by audit_guard.wire
        # (most straight from their bytes, without a protobuf message a record).
        self._grpc.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.logs.v1.LogsService",
            {"Export": grpc.unary_unary_rpc_method_handler(
                _LogsServicer(self).Export, request_deserializer=read_logs_request,
                response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString,
            )},
        ),))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), self._grpc
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), self._grpc)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        self._stopped = threading.Event()

    # -- one logs Export: compute → hand off → commit ---------------------------------------
    def handle_logs(self, request: LogsRequest,
                    deadline: float | None) -> str | None:
        """Process one logs Export; None when it may be acknowledged, else why it must not be
        (answered UNAVAILABLE: the collector keeps the data and sends it again).

        Compute, hand off and commit run as one step under the pipeline lock: the stateful
        stages see the committed state only, and a failure anywhere undoes the step, so the
        resent request is processed exactly as the first time (same spans, same ids)."""
        stats = BatchStats()
        started = time.monotonic()
        # Waiting longer than the caller would is work for nothing: it resends anyway.
        wait = (deadline if deadline is not None else started + _LOCK_WAIT_S) - started
        if not self.pipeline_lock.acquire(timeout=max(wait, 0.001)):
            self.telemetry.inc("audit_export_backpressure_total")
            return "audit-guard is busy with earlier requests; retry later"
        savepoint = self.pipeline.begin()
        try:
            count, outcome = self._compute_hand_off_commit(request, deadline, stats)
        except Exception as exc:
            self.pipeline.rollback(savepoint)
            return self._failed(exc)
        finally:
            self.pipeline_lock.release()
        if not count:
            return None
        if outcome is not None:
            self.telemetry.observe("audit_export_duration_seconds", time.monotonic() - started)
            self.count_outcome(outcome)
        # Counted once handed on: a retried call must not count its records twice.
        self.telemetry.record_stats(stats)
        if self.on_export is not None:
            self.on_export(True)
        if self.on_handed_on is not None:
            self.on_handed_on(stats)
        return None

    def _compute_hand_off_commit(
        self, request: LogsRequest, deadline: float | None,
        stats: BatchStats,
    ) -> tuple[int, ExportOutcome | None]:
        traces, count = self.pipeline.process_logs(request, time.time_ns(), stats)
        outcome = self.exporter.export(traces, stats.spans, deadline) if traces else None
        if self.completeness is not None:  # durable before the Export is acknowledged
            self.completeness.on_handed_on(stats, time.time_ns())
        self.pipeline.commit()
        return count, outcome

    def _failed(self, exc: Exception) -> str:
        """Why an Export is answered UNAVAILABLE (its state changes were undone)."""
        if isinstance(exc, DownstreamUnavailable | DownstreamRejected):
            self.telemetry.inc("audit_export_unavailable_total")
            if self.on_export is not None:
                self.on_export(False)
            return f"spans not handed on, keep and retry: {exc}"
        if isinstance(exc, StateWriteError):
            self.telemetry.inc("audit_state_write_errors_total")
            log.error("%s: answering UNAVAILABLE until it can be written (free space in "
                      "reconcile.state_dir)", exc)
            return f"state not saved, keep and retry: {exc}"
        # A bug: keep the data rather than acknowledge and drop it.
        log.error("processing an Export failed; answering UNAVAILABLE", exc_info=exc)
        return f"audit-guard failed processing this request, keep and retry: {exc!r}"

    def count_outcome(self, outcome: ExportOutcome) -> None:
        self.telemetry.inc("audit_spans_exported_total", outcome.accepted)
        if outcome.spooled:
            self.telemetry.inc("audit_spans_deadlettered_total", outcome.spooled,
                               reason=outcome.reason)

    def start(self) -> int:
        tls = self.config.tls
        port = (self._grpc.add_secure_port(self.config.listen, server_credentials(tls))
                if tls.enabled else self._grpc.add_insecure_port(self.config.listen))
        if port == 0:
            raise OSError(f"cannot listen on server.listen={self.config.listen}")
        self._grpc.start()
        for name in ("", *_SERVICES):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("OTLP/gRPC receiver listening on %s (%s%s)", self.config.listen,
                 ("mutual TLS" if tls.client_ca_file else "TLS") if tls.enabled else "plaintext",
                 ", bearer token required" if self.config.token() else "")
        return port

    def stop(self) -> None:
        """Stop taking calls, let those in flight finish (bounded by shutdown_grace_s)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self._grpc.stop(self.config.shutdown_grace_s).wait()
        if self.on_drained is not None:
            self.on_drained()
        self.exporter.shutdown()

    def wait(self) -> None:
        self._grpc.wait_for_termination()
