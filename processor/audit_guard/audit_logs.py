"""Findings as OTLP log records: every audit record the processor reports, as a log record a SIEM
can index (Loki, Elasticsearch/OpenSearch, Splunk, a JSON-lines archive: docs/collector.md).

A log record is made from the record's SPAN, not a second time from the record: spans.py stays the
one place that decides what a record says, and the log record cannot tell a different story
(same flags, same rule names, same trace and span ids, same times). Every span the processor
hands on passes here — request records, `missing_record` spans, unjoined error-log events,
unprocessable records — so the logs output is complete exactly when the spans output is. Spans
an app sends to audit-guard's own TraceService are relayed as spans only (`relay`): they are not
audit findings.

One span → one log record:
- `time_unix_nano`: the span's end (the record's own time: nginx `$msec`, the app's `time`);
- `trace_id`, `span_id`: the span's; the resource (service.name) and scope: the span's;
- `body`: the span name (`POST /v1/chat-messages`); `event_name`: `audit.record`;
- `severity`: WARN when the record is flagged (`audit.flags` not empty), else INFO;
- attributes: the span's (normalized audit fields, `audit.flags`, `audit.rules`, `audit.source`,
  …) plus `audit.parent_span_id` and `audit.duration_ns`, which a log record has no field for.

`FindingsExporter` hands findings on to the spans output, the logs output or both (`findings.
output`) and returns only when every output accepted them (or spooled them): an Export is
acknowledged upstream only then, and a retry sends both again, identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import ScopeLogs, SeverityNumber
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .handoff import ExportOutcome

__all__ = ["EVENT_NAME", "FindingsExporter", "logs_from_spans"]

EVENT_NAME = "audit.record"
_FLAGS = "audit.flags"


def _flagged(attributes: list[KeyValue]) -> bool:
    return any(kv.key == _FLAGS and kv.value.array_value.values for kv in attributes)


def _log_record_of(span: Span, scope_logs: ScopeLogs) -> None:
    record = scope_logs.log_records.add()
    record.time_unix_nano = span.end_time_unix_nano
    record.trace_id = span.trace_id
    record.span_id = span.span_id
    record.event_name = EVENT_NAME
    record.body.string_value = span.name
    flagged = _flagged(list(span.attributes))
    record.severity_number = (SeverityNumber.SEVERITY_NUMBER_WARN if flagged
                              else SeverityNumber.SEVERITY_NUMBER_INFO)
    record.severity_text = "WARN" if flagged else "INFO"
    record.attributes.extend(span.attributes)
    if span.parent_span_id:
        kv = record.attributes.add()
        kv.key, kv.value.string_value = "audit.parent_span_id", span.parent_span_id.hex()
    kv = record.attributes.add()
    kv.key = "audit.duration_ns"
    kv.value.int_value = span.end_time_unix_nano - span.start_time_unix_nano


def logs_from_spans(traces: bytes) -> tuple[bytes, int]:
    """A serialized ExportTraceServiceRequest → (serialized ExportLogsServiceRequest, number of
    log records): one log record per span, resources and scopes kept."""
    request = ExportTraceServiceRequest.FromString(traces)
    out = ExportLogsServiceRequest()
    count = 0
    for resource_spans in request.resource_spans:
        resource_logs = out.resource_logs.add()
        resource_logs.resource.CopyFrom(resource_spans.resource)
        resource_logs.schema_url = resource_spans.schema_url
        for scope_spans in resource_spans.scope_spans:
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.CopyFrom(scope_spans.scope)
            scope_logs.schema_url = scope_spans.schema_url
            for span in scope_spans.spans:
                _log_record_of(span, scope_logs)
                count += 1
    return out.SerializeToString(), count


class Sink(Protocol):
    def export(self, request: bytes, span_count: int, deadline: float | None = None
               ) -> ExportOutcome: ...

    def shutdown(self) -> None: ...


@dataclass
class FindingsExporter:
    """The spans output, the logs output, or both, behind the span exporter's interface (the
    OTLP server, completeness and integrity hand on through it unchanged).

    `spans` is the span exporter, there in every mode: spans relayed from an app (`relay`) are
    not findings and always go to it as spans. `findings_as_spans` False (output `logs`): the
    findings go as log records only.

    Both: spans first, then logs; a failure of either raises (nothing is acknowledged) and the
    retry re-sends both — the spans already accepted go again with the same ids, which a trace
    backend takes as a re-send. The outcome counted is the spans' (the logs' in `logs` mode).
    """

    spans: Sink
    logs: Sink
    findings_as_spans: bool = True

    def export(self, request: bytes | ExportTraceServiceRequest, span_count: int,
               deadline: float | None = None) -> ExportOutcome:
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        outcome = None
        if self.findings_as_spans:
            outcome = self.spans.export(payload, span_count, deadline)
        logs, count = logs_from_spans(payload)
        logged = self.logs.export(logs, count, deadline)
        return outcome or logged

    def relay(self, request: bytes, span_count: int, deadline: float | None = None
              ) -> ExportOutcome:
        return self.spans.export(request, span_count, deadline)

    def shutdown(self) -> None:
        self.spans.shutdown()
        self.logs.shutdown()
