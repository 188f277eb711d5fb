"""decode: an OTLP logs request → the raw records of each source, with what the collector
says about where and when it read them (the first stage of the pipeline; nothing is parsed
here). Sources are told apart by the `audit.source` attribute collector-config/ sets."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from itertools import accumulate, chain
from typing import Any, TypeVar

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .sources import journald, syslog

__all__ = [
    "APP", "NGINX", "NGINX_ERROR", "OFFSET_ATTRIBUTE", "Origin", "PARTIAL_ATTRIBUTE", "PGAUDIT",
    "SOURCES", "SOURCE_ALIASES", "SOURCE_ATTRIBUTE", "SourceRows", "WRAPPERS", "add_lines",
    "any_value_to_python", "file_runs", "group_logs", "request_time",
]

SOURCE_ATTRIBUTE = "audit.source"
T = TypeVar("T")
# Set by collector-config/ on a container line whose 16 KiB pieces never completed.
PARTIAL_ATTRIBUTE = "audit.partial"
# Set by file_log (include_file_record_offset): where the record starts in its file. The same
# line read again (a collector killed before it saved its offsets) has the same one.
OFFSET_ATTRIBUTE = "log.file.record_offset"
# Attributes the collector adds about *where* it read a record, not part of the record.
_COLLECTOR_ATTRIBUTES = frozenset(
    {SOURCE_ATTRIBUTE, "log.file.name", "log.file.path", "log.iostream", "logtag", "time",
     PARTIAL_ATTRIBUTE, OFFSET_ATTRIBUTE, "attrs"}
)


def any_value_to_python(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    return getattr(value, kind)


NGINX, NGINX_ERROR, APP, PGAUDIT = "nginx", "nginx_error", "app", "pgaudit"
SOURCES = (NGINX, NGINX_ERROR, APP, PGAUDIT)
# Values of the `audit.source` attribute (set by collector-config/) → source.
SOURCE_ALIASES = {
    "nginx": NGINX, "nginx_access": NGINX, "nginx_error": NGINX_ERROR,
    "app": APP, "dify": APP,
    "pgaudit": PGAUDIT, "postgresql": PGAUDIT, "postgres": PGAUDIT,
}
JOURNALD, SYSLOG = "journald", "syslog"
# `audit.source` values of records that wrap an app line (the journald and syslog receivers):
# unwrapped here (audit_guard.sources.journald / .syslog), the lines join the app's records.
WRAPPERS = {"journald": JOURNALD, "syslog": SYSLOG}


# Where a run of records came from, as the spans' resource gets it: the collector's resource
# attributes (host, container, k8s ids; not `audit.source`) and the records' `log.file.path`,
# each a serialized KeyValue, passed through as they came.
Origin = tuple[bytes, ...]
FILE_PATH_ATTRIBUTE = "log.file.path"


@dataclass
class SourceRows:
    """The records of one source in one request, in arrival order."""

    bodies: list[str | bytes] = field(default_factory=list)
    mapped: dict[int, dict[str, Any]] = field(default_factory=dict)  # rows already parsed
    observed: list[int | None] = field(default_factory=list)  # app: when it was read
    partial: set[int] = field(default_factory=set)  # app: container lines never completed
    cut: set[int] = field(default_factory=set)  # app: lines cut at a size cap (syslog)
    offsets: list[int | None] = field(default_factory=list)  # in their files; [] when unknown
    # (first row, origin) of each run of rows from one resource and file, in row order.
    origins: list[tuple[int, Origin]] = field(default_factory=list)

    def runs(self) -> list[tuple[int, int, Origin]]:
        """(start, end, origin) of each run, covering every row."""
        starts = self.origins or [(0, ())]
        ends = [start for start, _ in starts[1:]] + [len(self.bodies)]
        return [(start, end, origin)
                for (start, origin), end in zip(starts, ends, strict=True) if end > start]


def _attribute(attributes: Iterable[KeyValue], key: str) -> str | None:
    for kv in attributes:
        if kv.key == key:
            return kv.value.string_value
    return None


def _record_offsets(records: Any, lines: list[str] | None = None) -> list[int | None] | None:
    """Each record's offset in its file (`log.file.record_offset`: file_log's
    include_file_record_offset), or None when the first record has none. `lines`: the
    records' bodies when every one is a string (then the offsets may be predicted)."""
    at = next((j for j, kv in enumerate(records[0].attributes) if kv.key == OFFSET_ATTRIBUTE),
              None)
    if at is None:
        return None
    if lines is not None and len(lines) > 2:
        predicted = _predicted_offsets(records, lines, at)
        if predicted is not None:
            return predicted  # type: ignore[return-value]
    return [_offset_at(r, at) for r in records]


def _offset_at(record: Any, at: int) -> int | None:
    attributes = record.attributes
    if len(attributes) > at and (kv := attributes[at]).key == OFFSET_ATTRIBUTE:
        return kv.value.int_value  # type: ignore[no-any-return]  # every record laid out alike
    return next((kv.value.int_value for kv in attributes if kv.key == OFFSET_ATTRIBUTE), None)


_AND_NEWLINE = (1).__add__  # a line's size in its file: its text and "\n" (C-level in map)


def _predicted_offsets(records: Any, lines: list[str], at: int) -> list[int] | None:
    """The offsets of consecutive lines of one file, from the first one and the lines' sizes
    (each line and its "\n"), checked against the middle and the last record's own offset.
    A line is never shorter in its file than in its body, so each step is at least the one
    predicted: when both checks hold, every step was exact. A line the collector shortened
    (trailing whitespace, CRLF, invalid UTF-8), a split or skipped line, or another file in the
    batch makes a check fail, and the records are read one by one. Measured: reading each
    record's attribute through protobuf costs ~1 µs a record, this ~0.1 µs."""
    first = _offset_at(records[0], at)
    if first is None:
        return None
    if all(map(str.isascii, lines)):  # (no joined copy of the batch)
        steps = list(map(len, lines))
    else:
        steps = [len(line.encode("utf-8", "surrogatepass")) for line in lines]
    offsets = list(accumulate(map(_AND_NEWLINE, steps[:-1]), initial=first))
    middle = len(lines) // 2
    if (_offset_at(records[middle], at) != offsets[middle]
            or _offset_at(records[-1], at) != offsets[-1]):
        return None
    return offsets


def group_logs(request: ExportLogsServiceRequest) -> dict[str, SourceRows]:
    """The request's records by source. `audit.source` is read from the resource (where
    collector-config/ sets it: once per batch), else from the first record's attributes
    (then from every record's); records without it are Nginx access records.

    Consecutive ResourceLogs (and ScopeLogs) with the same resource and source are taken as one
    run: the collector's `load_balancing` exporter (scale-out) gives every record a ResourceLogs
    of its own, and handling each alone cost ~15 µs a record (make bench-chain)."""
    groups: dict[str, SourceRows] = {}
    pending: list[Any] = []  # record containers of the run being gathered
    pending_key: tuple[str, Origin] | None = None
    for resource_logs in request.resource_logs:
        attributes = resource_logs.resource.attributes
        resource_source = _attribute(attributes, SOURCE_ATTRIBUTE)
        resource = tuple(kv.SerializeToString() for kv in attributes
                         if kv.key != SOURCE_ATTRIBUTE)
        for scope_logs in resource_logs.scope_logs:
            records = scope_logs.log_records
            if not records:
                continue
            source_name = resource_source
            per_record = False
            if source_name is None:
                source_name = _attribute(records[0].attributes, SOURCE_ATTRIBUTE)
                per_record = source_name is not None
            if not per_record:
                key = (source_name or NGINX, resource)
                if key != pending_key:
                    _add_gathered(groups, pending_key, pending)
                    pending, pending_key = [], key
                pending.append(records)
                continue
            _add_gathered(groups, pending_key, pending)
            pending, pending_key = [], None
            by_source: dict[str, list[Any]] = {}
            for r in records:
                name = _attribute(r.attributes, SOURCE_ATTRIBUTE) or NGINX
                by_source.setdefault(name if name in WRAPPERS else SOURCE_ALIASES.get(name, NGINX),
                                     []).append(r)
            for source, rows in by_source.items():
                _add_from_files(groups, source, rows, resource)
    _add_gathered(groups, pending_key, pending)
    return groups


def _add_gathered(groups: dict[str, SourceRows], key: tuple[str, Origin] | None,
                  pending: list[Any]) -> None:
    if key is None or not pending:
        return
    records = pending[0] if len(pending) == 1 else list(chain.from_iterable(pending))
    _add_from_files(groups, key[0], records, key[1])


def _file_path(record: Any) -> bytes | None:
    for kv in record.attributes:
        if kv.key == FILE_PATH_ATTRIBUTE:
            return kv.SerializeToString()  # type: ignore[no-any-return]
    return None


def _add_from_files(groups: dict[str, SourceRows], name: str, records: Any,
                    resource: Origin) -> None:
    """`_add_named`, noting the origin of the rows it adds: the resource, and the file when
    the collector names it (see `file_runs`)."""
    middle = _file_path(records[len(records) // 2])
    for path, run in file_runs(records, _file_path, middle):
        _add_run(groups, name, run, resource + ((path,) if path else ()))


def file_runs(items: Sequence[T], path_of: Callable[[T], bytes | None],
              middle: bytes | None) -> list[tuple[bytes | None, Sequence[T]]]:
    """The runs of consecutive items (records, or runs of them) that name one file, with its
    serialized `log.file.path` (None: not named); `middle`: the path of the batch's middle
    record. A batch usually comes from one file: when its first, middle and last records name
    the same one, all are taken to (reading every record's attributes through protobuf costs
    ~1 µs a record); otherwise each item's path is read."""
    first = path_of(items[0])
    if first == middle == path_of(items[-1]):
        return [(first, items)]
    runs: list[tuple[bytes | None, list[T]]] = []
    for item in items:
        path = path_of(item)
        if runs and runs[-1][0] == path:
            runs[-1][1].append(item)
        else:
            runs.append((path, [item]))
    return runs  # type: ignore[return-value]


def _add_run(groups: dict[str, SourceRows], name: str, records: Any, origin: Origin) -> None:
    before = {source: len(rows.bodies) for source, rows in groups.items()}
    _add_named(groups, name, records)
    for source, rows in groups.items():
        _note_origin(rows, before.get(source, 0), origin)


def _note_origin(rows: SourceRows, start: int, origin: Origin) -> None:
    """The rows from `start` on came from `origin`."""
    if len(rows.bodies) > start and (not rows.origins or rows.origins[-1][1] != origin):
        rows.origins.append((start, origin))


def add_lines(groups: dict[str, SourceRows], source: str, lines: list[str],
              offsets: list[int | None] | None, origin: Origin) -> None:
    """A run of raw lines (none empty) of one origin, with their offsets in their file
    (None: unknown), added to `source`'s rows: what a run of records whose bodies are all
    strings adds (audit_guard.wire reads such runs straight from the request's bytes)."""
    rows = groups.get(source)
    if rows is None:
        rows = groups[source] = SourceRows()
    start = len(rows.bodies)
    rows.bodies += lines
    _extend_offsets(rows, offsets, len(lines))
    _note_origin(rows, start, origin)


def _extend_offsets(rows: SourceRows, offsets: list[int | None] | None, added: int) -> None:
    """The offsets of the `added` rows just added (None: unknown)."""
    if offsets is not None or rows.offsets:
        rows.offsets += [None] * (len(rows.bodies) - added - len(rows.offsets))
        rows.offsets += offsets or [None] * added


def _add_named(groups: dict[str, SourceRows], name: str, records: Any) -> None:
    wrapper = WRAPPERS.get(name)
    if wrapper == JOURNALD:
        _add_journal_entries(groups, records)
    elif wrapper == SYSLOG:
        _add_syslog_messages(groups, records)
    else:
        _add_rows(groups, SOURCE_ALIASES.get(name, NGINX), records)


def _app_rows(groups: dict[str, SourceRows], added: int) -> tuple[SourceRows, int]:
    """The app's rows, ready for `added` more (their offsets, if any, unknown)."""
    rows = groups.get(APP)
    if rows is None:
        rows = groups[APP] = SourceRows()
    if rows.offsets:
        rows.offsets += [None] * added
    return rows, len(rows.bodies)


def _journal_fields(record: Any) -> dict[str, Any] | None:
    """A journald receiver record's journal fields: its map body (or JSON text)."""
    body = record.body
    kind = body.WhichOneof("value")
    if kind == "kvlist_value":
        return any_value_to_python(body)  # type: ignore[no-any-return]
    if kind in ("string_value", "bytes_value"):
        return journald.decode_entry(getattr(body, kind))
    return None


def _add_journal_entries(groups: dict[str, SourceRows], records: Any) -> None:
    """Journal entries (Docker's journald driver): pieces recombined, an unfinished line
    flagged partial; the observed time is the entry's own (see sources.journald)."""
    lines = journald.recombine((j, _journal_fields(r)) for j, r in enumerate(records))
    rows, first = _app_rows(groups, 0)
    # The entry's journal cursor stands for a file offset: the same entry read again is the
    # same record (same spans), not a duplicate (see correlate.duplicates).
    rows.offsets += [None] * (first - len(rows.offsets))
    rows.offsets += [_cursor_id(line.cursor) for line in lines]
    for j, line in enumerate(lines):
        rows.bodies.append(line.content)
        rows.observed.append(line.observed_time_unix_nano)
        if line.partial:
            rows.partial.add(first + j)


def _cursor_id(cursor: str | None) -> int | None:
    if not cursor:
        return None
    digest = blake2b(cursor.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest) >> 1  # an int64, as a file offset is


def _add_syslog_messages(groups: dict[str, SourceRows], records: Any) -> None:
    """syslog messages (Docker's syslog driver, logger, rsyslog): the app line is the MSG
    part; RFC 5424's TIMESTAMP (the sender's) is the observed time; a cut one is flagged."""
    rows, first = _app_rows(groups, len(records))
    for j, r in enumerate(records):
        body = r.body
        kind = body.WhichOneof("value")
        if kind in ("string_value", "bytes_value"):
            message = syslog.parse_message(getattr(body, kind))
        else:  # a receiver that parsed into a map body: its `message` member
            fields = _mapping(body, r.attributes)
            message = syslog.parse_message(journald.message_text(fields.get("message")) or "")
        rows.bodies.append(message.message)
        rows.observed.append(message.time_unix_nano)
        if message.cut:
            rows.cut.add(first + j)


def _add_rows(groups: dict[str, SourceRows], source: str, records: Any) -> None:
    rows = groups.get(source)
    if rows is None:
        rows = groups[source] = SourceRows()
    lines: list[str] | None = [r.body.string_value for r in records]
    if "" not in lines:  # type: ignore[operator]  # the usual case: every body is a raw line
        rows.bodies += lines  # type: ignore[arg-type]
    else:
        lines = None
        for log_record in records:
            body = log_record.body
            kind = body.WhichOneof("value")
            if kind == "string_value":
                rows.bodies.append(body.string_value)
            elif kind == "bytes_value":
                rows.bodies.append(body.bytes_value)
            else:
                rows.mapped[len(rows.bodies)] = _mapping(body, log_record.attributes)
                rows.bodies.append("")
    _extend_offsets(rows, _record_offsets(records, lines), len(records))
    if source == APP:
        first = len(rows.bodies) - len(records)
        for j, r in enumerate(records):
            for kv in r.attributes:
                if kv.key == PARTIAL_ATTRIBUTE and kv.value.bool_value:
                    rows.partial.add(first + j)
        # The container runtime's time (the record's timestamp, set by the collector's
        # container parser): when the app's write reached its log. Never the collector's
        # read time: a plain file read late (first start, collector down) is a backlog of
        # the pipeline, not an app whose stdout was held back (`delayed`).
        rows.observed += [r.time_unix_nano or None for r in records]

def _mapping(body: AnyValue, attributes: Iterable[KeyValue]) -> dict[str, Any]:
    if body.WhichOneof("value") == "kvlist_value":  # the collector parsed into a map body
        return any_value_to_python(body)  # type: ignore[no-any-return]
    # The collector parsed the JSON into attributes and left no body.
    return {
        kv.key: any_value_to_python(kv.value)
        for kv in attributes
        if kv.key not in _COLLECTOR_ATTRIBUTES
    }


def request_time(request: ExportLogsServiceRequest) -> int:
    """When the collector read the request's first record (its observed time): the same for
    every retry of the request."""
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                return record.observed_time_unix_nano or record.time_unix_nano
    return 0
