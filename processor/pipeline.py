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
from .record import AuditRecord, RecordBatch
from .routes import DIFY_ROUTES, RouteTable
from .sources import nginx_access
from .spans import SpanBatch, SpanBuilder

__all__ = ["CHUNK_ROWS", "Pipeline", "any_value_to_python"]

CHUNK_ROWS = 1024

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
        self.span_builder = SpanBuilder()

    # decode + parse ------------------------------------------------------------------------
    def log_bodies(
        self, request: ExportLogsServiceRequest
    ) -> tuple[list[str | bytes], dict[int, dict[str, Any]]]:
        """The request's log bodies in order, and the rows the collector already parsed (a map
        body, or attributes with no body) as dicts."""
        bodies: list[str | bytes] = []
        mapped: dict[int, dict[str, Any]] = {}
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                records = scope_logs.log_records
                lines = [r.body.string_value for r in records]
                if "" not in lines:  # the usual case: every body is a raw line
                    bodies += lines
                    continue
                for log_record in records:
                    body = log_record.body
                    kind = body.WhichOneof("value")
                    if kind == "string_value":
                        bodies.append(body.string_value)
                    elif kind == "bytes_value":
                        bodies.append(body.bytes_value)
                    else:
                        mapped[len(bodies)] = self._mapping(body, log_record.attributes)
                        bodies.append("")
        return bodies, mapped

    @staticmethod
    def parse_bodies(
        bodies: list[str | bytes], mapped: dict[int, dict[str, Any]] | None = None
    ) -> RecordBatch:
        if not mapped:
            return nginx_access.parse_lines(bodies)
        objs, cut, malformed = nginx_access.decode_lines(
            [b if i not in mapped else "{}" for i, b in enumerate(bodies)]
        )
        for i, obj in mapped.items():
            objs[i] = obj
        batch = nginx_access.parse_mappings(objs)
        batch.raw = [b if i not in mapped else None for i, b in enumerate(bodies)]
        nginx_access.mark_decoding(batch, cut, malformed)
        return batch

    @staticmethod
    def _mapping(body: AnyValue, attributes: Iterable[KeyValue]) -> dict[str, Any]:
        if body.WhichOneof("value") == "kvlist_value":  # the collector parsed into a map body
            return any_value_to_python(body)  # type: ignore[no-any-return]
        # The collector parsed the JSON into attributes and left no body.
        return {
            kv.key: any_value_to_python(kv.value)
            for kv in attributes
            if kv.key not in _COLLECTOR_ATTRIBUTES
        }

    # check + correlate -------------------------------------------------------------------
    def check(self, batch: RecordBatch) -> RecordBatch:
        check_truncation(batch)
        self._validate(batch)
        batch.route = self._routes.routes(batch.path)
        assign_ids(batch)
        return batch

    def check_one(self, rec: AuditRecord) -> AuditRecord:
        """`check` for a single record (tests, tools)."""
        return self.check(RecordBatch.from_records(rec.source, [rec])).row(0)

    def records_from_logs(self, request: ExportLogsServiceRequest) -> RecordBatch:
        return self.check(self.parse_bodies(*self.log_bodies(request)))

    # spans -------------------------------------------------------------------------------
    def to_traces(self, batch: RecordBatch, now_ns: int) -> bytes:
        """The batch's spans as a serialized ExportTraceServiceRequest (b"" when none)."""
        spans = SpanBatch(self._settings.nginx_service_name)
        spans.spans = self.span_builder.spans(batch, now_ns)
        return spans.request_bytes()

    def process_logs(self, request: ExportLogsServiceRequest, now_ns: int) -> tuple[bytes, int]:
        """A logs request → (serialized ExportTraceServiceRequest, number of records).

        Large requests are processed in chunks of CHUNK_ROWS records: the per-chunk working set
        then stays in the CPU cache (measured: 8192-record batches in one piece run ~30% slower).
        """
        bodies, mapped = self.log_bodies(request)
        spans = SpanBatch(self._settings.nginx_service_name)
        for start in range(0, len(bodies), CHUNK_ROWS):
            end = start + CHUNK_ROWS
            chunk_mapped = {i - start: m for i, m in mapped.items() if start <= i < end}
            batch = self.check(self.parse_bodies(bodies[start:end], chunk_mapped))
            spans.spans += self.span_builder.spans(batch, now_ns)
        return spans.request_bytes(), len(bodies)
