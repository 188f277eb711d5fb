"""OTLP/gRPC span exporter with retry and backoff, written out once.

`export()` returns only when downstream has accepted the spans, or has permanently rejected
them (counted, never retried), or `max_wait_s` has passed / shutdown began — then it raises
`DownstreamUnavailable` so the receiver answers UNAVAILABLE and the collector keeps the data.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ..config import ExporterConfig

__all__ = ["DownstreamUnavailable", "ExportOutcome", "SpanExporter"]

log = logging.getLogger(__name__)

_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# OTLP spec: retryable codes. RESOURCE_EXHAUSTED only when the server sends RetryInfo.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class DownstreamUnavailable(Exception):
    """Downstream did not accept the spans in time; nothing was lost, the caller must retry."""


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    accepted: int  # spans downstream took
    rejected: int  # spans downstream refused for good (partial success or permanent error)
    reason: str = ""  # why they were rejected


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The server's RetryInfo delay (trailing metadata google.rpc.retryinfo-bin), if any."""
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        if key == "google.rpc.retryinfo-bin":
            info = error_details_pb2.RetryInfo.FromString(value)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class SpanExporter:
    def __init__(self, config: ExporterConfig) -> None:
        self._config = config
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if config.insecure:
            self._channel = grpc.insecure_channel(config.endpoint, options=options)
        else:
            self._channel = grpc.secure_channel(
                config.endpoint, grpc.ssl_channel_credentials(), options=options
            )
        # Requests arrive already serialized (bytes pass through untouched).
        self._call = self._channel.unary_unary(
            _METHOD,
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self._shutdown = threading.Event()

    def export(self, request: ExportTraceServiceRequest | bytes, span_count: int) -> ExportOutcome:
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        cfg = self._config
        deadline = time.monotonic() + cfg.max_wait_s
        attempt = 0
        while True:
            if self._shutdown.is_set():
                raise DownstreamUnavailable("exporter is shutting down")
            timeout = min(cfg.timeout_s, max(deadline - time.monotonic(), 0.001))
            try:
                response = self._call(payload, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                retry_info = _retry_delay(error)
                retryable = code in _RETRYABLE or (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_info is not None
                )
                if not retryable:
                    reason = f"{code.name}: {error.details()}"  # type: ignore[attr-defined]
                    log.error("downstream %s rejected %d spans for good: %s",
                              cfg.endpoint, span_count, reason)
                    return ExportOutcome(0, span_count, code.name.lower())
                backoff = min(cfg.retry_initial_backoff_s * 2**attempt, cfg.retry_max_backoff_s)
                delay = retry_info if retry_info is not None else backoff * random.uniform(0.5, 1)
                attempt += 1
                if time.monotonic() + delay >= deadline:
                    raise DownstreamUnavailable(
                        f"downstream {cfg.endpoint} unavailable after {attempt} attempts "
                        f"({code.name}: {error.details()})"  # type: ignore[attr-defined]
                    ) from None
                if self._shutdown.wait(delay):
                    raise DownstreamUnavailable("exporter is shutting down") from None
                continue
            rejected = response.partial_success.rejected_spans
            if rejected:
                log.error("downstream %s rejected %d of %d spans: %s", cfg.endpoint, rejected,
                          span_count, response.partial_success.error_message)
            reason = "partial_success" if rejected else ""
            return ExportOutcome(span_count - rejected, rejected, reason)

    def shutdown(self) -> None:
        """Interrupts waits between retries; idempotent."""
        self._shutdown.set()
        self._channel.close()
