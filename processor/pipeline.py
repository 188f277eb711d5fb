"""The pipeline shared by `serve` and (later) `replay`:

    decode → parse → check (validate, truncation) → correlate (ids, route) → spans

Pure and synchronous: time comes in as an argument, nothing here reads the clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .checks.truncation import check_truncation
from .checks.validate import AuditFieldValidator
from .config import Settings
from .correlate.traces import assign_ids
from .record import AuditRecord
from .routes import DIFY_ROUTES, RouteTable
from .sources import nginx_access
from .spans import SpanBatch, SpanBuilder

__all__ = ["Pipeline", "any_value_to_python"]

SOURCE_ATTRIBUTE = "audit.source"
# Attributes the collector adds about *where* it read a record, not part of the record.
_COLLECTOR_ATTRIBUTES = frozenset(
    {SOURCE_ATTRIBUTE, "log.file.name", "log.file.path", "log.iostream", "logtag", "time"}
)
# Resource attributes worth keeping on the spans (where the record was collected).
_KEPT_RESOURCE_KEYS = ("host.name", "service.instance.id", "k8s.pod.name", "container.name")


def any_value_to_python(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    return getattr(value, kind)


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._validate = AuditFieldValidator(settings.audited_path_regex())
        self._routes = RouteTable([*DIFY_ROUTES, *settings.routes])
        self._spans = SpanBuilder()

    # decode + parse ------------------------------------------------------------------------
    def parse_log_record(self, body: AnyValue, attributes: Iterable[KeyValue]) -> AuditRecord:
        kind = body.WhichOneof("value")
        if kind == "string_value":
            return nginx_access.parse_line(body.string_value)
        if kind == "bytes_value":
            return nginx_access.parse_line(body.bytes_value)
        if kind == "kvlist_value":  # the collector parsed the JSON into a map body
            return nginx_access.parse_mapping(any_value_to_python(body))
        # The collector parsed the JSON into attributes and left no body.
        return nginx_access.parse_mapping(
            {
                kv.key: any_value_to_python(kv.value)
                for kv in attributes
                if kv.key not in _COLLECTOR_ATTRIBUTES
            }
        )

    # check + correlate -------------------------------------------------------------------
    def check(self, rec: AuditRecord) -> AuditRecord:
        check_truncation(rec)
        self._validate(rec)
        if rec.path is not None:
            rec.route = self._routes.route(rec.path)
        assign_ids(rec)
        return rec

    def records_from_logs(self, request: ExportLogsServiceRequest) -> list[AuditRecord]:
        records = []
        parse, check = self.parse_log_record, self.check
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for log_record in scope_logs.log_records:
                    records.append(check(parse(log_record.body, log_record.attributes)))
        return records

    # spans -------------------------------------------------------------------------------
    def to_traces(self, records: list[AuditRecord], now_ns: int) -> bytes:
        """The records' spans as a serialized ExportTraceServiceRequest (b"" when none)."""
        batch = SpanBatch(self._settings.nginx_service_name)
        span = self._spans.server_span
        batch.spans = [span(rec, now_ns) for rec in records]
        return batch.request_bytes()

    def process_logs(self, request: ExportLogsServiceRequest, now_ns: int) -> tuple[bytes, int]:
        records = self.records_from_logs(request)
        return self.to_traces(records, now_ns), len(records)
