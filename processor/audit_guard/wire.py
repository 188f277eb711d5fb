"""wire: an OTLP logs request as the service receives it (its serialized bytes) → the request
the pipeline reads: for the usual shape, read straight from the bytes by a C reader
(`_logs_wire.c`) and grouped here as audit_guard.decode groups a protobuf message; any other,
parsed by protobuf (upb) and grouped by audit_guard.decode.

The usual shape is what the collector's file_log receivers send: string bodies, the file's path
and each record's offset as attributes, one `audit.source` on the resource (for the sources
whose records are raw lines: Nginx access and error logs, pgaudit). Measured on the bench's
requests (make bench): parsing with upb and reading each body through it ~0.8 µs a record,
reading the bytes ~0.1 µs.

One difference, deliberate: a record's offset in its file is the one the collector gave with
it. audit_guard.decode predicts the offsets of a run from its first one and the lines' sizes,
checked against two of them (reading every record's through protobuf costs ~1 µs a record);
the two agree whenever the offsets are those of consecutive lines of a file, as file_log's are.
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from . import decode
from .decode import (
    APP,
    NGINX,
    SOURCE_ALIASES,
    WRAPPERS,
    Origin,
    SourceRows,
    add_lines,
    file_runs,
)

try:  # setup.py builds it; where it could not be built, upb parses every request
    from ._logs_wire import read as _read_wire
except ImportError:  # pragma: no cover - a setup without a C compiler
    _read_wire = None

__all__ = ["LogsRequest", "WireRequest", "group_logs", "native_reader", "read_logs_request",
           "request_time"]

# A segment: records of one ScopeLogs naming one file, as the C reader gives them:
# [resource index, serialized log.file.path KeyValue | None, bodies, offsets | None].
_Segment = list


class WireRequest:
    """A logs request read from its bytes (see the module's docstring): when the collector
    read its first record (`read_ns`), each ResourceLogs' source and other attributes, and the
    runs of records of one scope and file."""

    __slots__ = ("read_ns", "resources", "segments")

    def __init__(self, read_ns: int, resources: list[tuple[str, Origin]],
                 segments: list[_Segment]) -> None:
        self.read_ns = read_ns
        self.resources = resources
        self.segments = segments


LogsRequest = ExportLogsServiceRequest | WireRequest


def native_reader() -> bool:
    """Whether the C reader was built (setup.py): without it upb parses every request."""
    return _read_wire is not None


def read_logs_request(raw: bytes) -> LogsRequest:
    """The serialized request → what the pipeline reads (the gRPC server's deserializer).
    Raises what protobuf raises for bytes that are not a logs request."""
    read = _read_wire(raw) if _read_wire is not None else None
    if read is not None:
        read_ns, resources, segments = read
        named = [(source or NGINX, attributes) for source, attributes in resources]
        if not any(name in WRAPPERS or SOURCE_ALIASES.get(name, NGINX) == APP
                   for name, _ in named):
            return WireRequest(read_ns, named, segments)
    # The app's records need each record's time and flags, a wrapper's their structure.
    return ExportLogsServiceRequest.FromString(raw)


def request_time(request: LogsRequest) -> int:
    """When the collector read the request's first record (audit_guard.decode.request_time)."""
    if isinstance(request, WireRequest):
        return request.read_ns
    return decode.request_time(request)


def group_logs(request: LogsRequest) -> dict[str, SourceRows]:
    """The request's records by source, as audit_guard.decode.group_logs gives them: runs of
    consecutive scopes of one resource and source gathered, then split by file."""
    if not isinstance(request, WireRequest):
        return decode.group_logs(request)
    groups: dict[str, SourceRows] = {}
    pending: list[_Segment] = []
    pending_key: tuple[str, Origin] | None = None
    for segment in request.segments:
        key = request.resources[segment[0]]
        if key != pending_key:
            _add_gathered(groups, pending_key, pending)
            pending, pending_key = [], key
        pending.append(segment)
    _add_gathered(groups, pending_key, pending)
    return groups


def _add_gathered(groups: dict[str, SourceRows], key: tuple[str, Origin] | None,
                  pending: list[_Segment]) -> None:
    """decode._add_from_files over segments: the runs of one file (decode.file_runs), each
    added as its lines."""
    if key is None or not pending:
        return
    name, resource = key
    source = SOURCE_ALIASES.get(name, NGINX)
    middle = _path_at(pending, sum(len(s[2]) for s in pending) // 2)
    for path, segments in file_runs(pending, itemgetter(1), middle):
        if len(segments) == 1:
            lines, offsets = segments[0][2], segments[0][3]
        else:
            lines = list(chain.from_iterable(s[2] for s in segments))
            offsets = (None if segments[0][3] is None
                       else list(chain.from_iterable(s[3] for s in segments)))
        add_lines(groups, source, lines, offsets, resource + ((path,) if path else ()))


def _path_at(segments: list[_Segment], row: int) -> bytes | None:
    for segment in segments:
        if row < len(segment[2]):
            return segment[1]  # type: ignore[no-any-return]
        row -= len(segment[2])
    return None
