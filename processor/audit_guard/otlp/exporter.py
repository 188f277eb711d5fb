"""OTLP/gRPC span exporter: split, retry and spool, written out once.

`export()` hands a serialized ExportTraceServiceRequest downstream in requests of at most
`exporter.max_request_bytes` and returns only when every span was accepted downstream or safely
put in the dead-letter spool. Otherwise it raises, and nothing may be acknowledged upstream:

- `DownstreamUnavailable` (retryable): downstream did not accept before the deadline (every
  non-OK answer but the permanent codes is retried with backoff, RetryInfo respected), shutdown
  began, or the spool could not take a permanently refused request. The receiver answers
  UNAVAILABLE and the collector keeps the data in its persistent queue.
- `DownstreamRejected` (permanent): downstream refused spans for good (a code in
  `exporter.permanent_codes`, or a partial success) and there is no spool to keep them in. The
  receiver answers UNAVAILABLE too — never acknowledge and drop — and `resend` uses it to stop.

Pieces already accepted before a failure are sent again on the retry: the spans are identical
(same ids), so the backend sees a re-send, never a different story.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ..config import ExporterConfig
from ..handoff import DownstreamRejected, DownstreamUnavailable, ExportOutcome
from .security import client_credentials
from .split import split_request

if TYPE_CHECKING:
    from .spool import DeadLetterSpool

__all__ = ["DownstreamRejected", "DownstreamUnavailable", "ExportOutcome", "SpanExporter"]

log = logging.getLogger(__name__)

_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# The logs output (audit_guard.audit_logs) goes through the same loop: ExportLogsServiceRequest
# has the trace request's field numbers (resource, scope, items = 1, 1, 2), so it splits alike.
_LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


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
    """`logs=True`: the same exporter for log records (LogsService; never spooled: the spool
    and `resend` hold span requests, so a log request refused for good raises
    DownstreamRejected and is not acknowledged). Messages say "span(s)" for both."""

    def __init__(self, config: ExporterConfig, spool: DeadLetterSpool | None = None,
                 *, logs: bool = False) -> None:
        if logs and spool is not None:
            raise ValueError("the logs exporter has no dead-letter spool (it holds spans)")
        self._config = config
        self.spool = spool
        self._logs = logs
        self._permanent = frozenset(grpc.StatusCode[name] for name in config.permanent_codes)
        # Our own requests are at most max_request_bytes; relayed ones (TraceService) may be
        # larger before they are split, so the channel itself does not cap them.
        options = [("grpc.max_send_message_length", -1)]
        if config.insecure:
            self._channel = grpc.insecure_channel(config.endpoint, options=options)
        else:
            if config.tls.server_name:
                options.append(("grpc.ssl_target_name_override", config.tls.server_name))
            self._channel = grpc.secure_channel(
                config.endpoint, client_credentials(config.tls), options=options
            )
        # Requests arrive already serialized (bytes pass through untouched).
        self._call = self._channel.unary_unary(
            _LOGS_METHOD if logs else _METHOD,
            request_serializer=None,
            response_deserializer=(ExportLogsServiceResponse if logs
                                   else ExportTraceServiceResponse).FromString,
        )
        metadata = {k.lower(): v for k, v in config.headers.items()}
        token = config.token()
        if token:
            metadata["authorization"] = f"Bearer {token}"
        self._metadata = tuple(metadata.items())
        self._shutdown = threading.Event()

    def export(
        self,
        request: ExportTraceServiceRequest | bytes,
        span_count: int,
        deadline: float | None = None,
    ) -> ExportOutcome:
        """Hand the spans on; `deadline` (time.monotonic()) bounds all retries, at most
        exporter.max_wait_s from now. Raises DownstreamUnavailable or DownstreamRejected."""
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        cfg = self._config
        latest = time.monotonic() + cfg.max_wait_s
        deadline = latest if deadline is None else min(deadline, latest)
        pieces = split_request(payload, cfg.max_request_bytes, span_count)
        accepted = spooled = 0
        reasons = []
        for piece, spans in pieces:
            refused, reason = self._send(piece, spans, deadline)
            accepted += spans - refused
            if refused:
                self._keep(piece, spans, refused, reason)
                spooled += refused
                reasons.append(reason)
        return ExportOutcome(accepted, spooled, ",".join(dict.fromkeys(reasons)))

    def relay(self, request: ExportTraceServiceRequest | bytes, span_count: int,
              deadline: float | None = None) -> ExportOutcome:
        """Spans that are not audit findings (an app's own, sent to audit-guard's
        TraceService): `export`. FindingsExporter sends them as spans only."""
        return self.export(request, span_count, deadline)

    def _keep(self, piece: bytes, spans: int, refused: int, reason: str) -> None:
        """Spool a request downstream refused spans of for good (all of it: a partial success
        does not say which; a resend re-sends the accepted ones unchanged). Without a spool,
        or when it cannot take the request, the caller must not acknowledge."""
        if self.spool is None:
            raise DownstreamRejected(reason, refused)
        try:
            self.spool.append(piece, spans, reason, time.time_ns())
        except OSError as exc:
            raise DownstreamUnavailable(
                f"downstream refused {refused} span(s) for good ({reason}) and the dead-letter "
                f"spool cannot take them: {exc}"
            ) from None
        log.error("downstream %s refused %d span(s) for good (%s): kept in the dead-letter "
                  "spool; fix the cause, then run `audit-guard resend`",
                  self._config.endpoint, refused, reason)

    def _send(self, piece: bytes, spans: int, deadline: float) -> tuple[int, str]:
        """One request until accepted: (spans refused for good, why). The one retry loop."""
        cfg = self._config
        attempt = 0
        while True:
            if self._shutdown.is_set():
                raise DownstreamUnavailable("exporter is shutting down")
            timeout = min(cfg.timeout_s, max(deadline - time.monotonic(), 0.001))
            try:
                response = self._call(piece, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                details = error.details()  # type: ignore[attr-defined]
                if code in self._permanent:
                    log.error("downstream %s refused %d span(s): %s: %s (a permanent code, "
                              "exporter.permanent_codes)", cfg.endpoint, spans, code.name, details)
                    return spans, code.name.lower()
                retry_info = _retry_delay(error)
                backoff = min(cfg.retry_initial_backoff_s * 2**attempt, cfg.retry_max_backoff_s)
                delay = retry_info if retry_info is not None else backoff * random.uniform(0.5, 1)
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("downstream %s answered %s (%s); retrying (attempt %d)",
                                cfg.endpoint, code.name, details, attempt)
                if time.monotonic() + delay >= deadline:
                    raise DownstreamUnavailable(
                        f"downstream {cfg.endpoint} did not accept after {attempt} attempts "
                        f"({code.name}: {details})"
                    ) from None
                if self._shutdown.wait(delay):
                    raise DownstreamUnavailable("exporter is shutting down") from None
                continue
            partial = response.partial_success
            rejected = min(partial.rejected_log_records if self._logs else partial.rejected_spans,
                           spans)
            if rejected:
                log.error("downstream %s rejected %d of %d spans: %s", cfg.endpoint, rejected,
                          spans, response.partial_success.error_message)
                return rejected, "partial_success"
            return 0, ""

    def shutdown(self) -> None:
        """Interrupts waits between retries; idempotent."""
        self._shutdown.set()
        self._channel.close()
