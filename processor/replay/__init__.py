"""`audit-guard replay`: the offline, incident-time twin of the service.

Reads raw log files, runs the service's pipeline over them (the same parse → check → correlate
stages, in the same batches), and writes JSON Lines to stdout, one object per input record:

    {"file": str, "line": int, "source": str, "trace_id": hex32, "span_id": hex16,
     "flags": [str], "fields": {...normalized audit fields present in the record...}}

plus, when both Nginx and app records are given, one synthetic object per Nginx request to an
audited path that the app answered (the service's rule: processor.correlate.reconcile) with no
app audit record within the window:

    {"file": null, "line": null, "source": "app", "trace_id": <the request's>, "span_id": ...,
     "flags": ["missing_record"], "fields": {...the Nginx request's fields...}}

Formats are detected per file (processor.sources.detect: on what only one format writes, never
on generic keys such as request_id or status): Nginx JSON access logs, app logs (Dify JSON or
text, generic JSON audit lines), PostgreSQL logs with pgaudit lines (stderr, csvlog, jsonlog),
nginx error logs, and Nginx or app lines inside Docker json-file or CRI container logs
(recombined first; a line split by the runtime and never completed is flagged
`truncated:partial_line`). `--source FORMAT` forces one format for every file, `--source
FORMAT=FILE` for one file; the summary names each file's format and why.

A human summary goes to stderr. Exit 0 when nothing is flagged, 1 when anything is, 2 on a usage
or unreadable-input error (and when --export cannot hand the spans on). A file that cannot be
read (missing, unreadable, a corrupt .gz, a format not recognized) is named in an error on
stderr and skipped — the records read from it before the problem are kept — and every other
file is still replayed; the exit code is then 2. A bad line is never an error: it is a record
with its flags.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path
from typing import IO, Any

import orjson

from . import flags
from .config import Settings
from .correlate.errorlog import ErrorLogIndex
from .correlate.reconcile import expected_app_records, missing_span_id
from .pipeline import CHUNK_ROWS, Pipeline
from .record import RecordBatch
from .sources import container, detect, nginx_error

__all__ = ["ReplayError", "detect_file", "parse_source_options", "record_fields", "replay"]

SOURCES = ("auto", *detect.FORMATS)
CONTAINER_FORMATS = (container.DOCKER, container.CRI)
_SAMPLE = 50  # lines a format is decided on


class ReplayError(Exception):
    """A usage or input problem, worded for the operator; exit code 2."""


def _open(path: Path) -> IO[bytes]:
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline) for every non-empty line."""
    with _open(path) as fh:
        try:
            for number, line in enumerate(fh, 1):
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield number, line
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ReplayError(f"cannot read {path}: {exc}") from None


def _sample(path: Path) -> list[bytes]:
    sample = []
    for _, line in _lines(path):
        sample.append(line)
        if len(sample) >= _SAMPLE:
            break
    return sample


def parse_source_options(values: Sequence[str]) -> tuple[str, dict[Path, str]]:
    """`--source` values → (the format for every file, {file: its own format}).

    Each value is FORMAT (all files) or FORMAT=FILE (that file; repeatable)."""
    every: str | None = None
    per_file: dict[Path, str] = {}
    accepted = ", ".join(detect.FORMATS)
    for value in values:
        fmt, eq, name = value.partition("=")
        if fmt not in SOURCES or (eq and fmt == "auto"):
            raise ReplayError(f"--source {value}: unknown format {fmt!r}; accepted formats: "
                              f"{accepted}, as FORMAT (every file; auto, the default, detects "
                              "each) or FORMAT=FILE (that file)")
        if not eq:
            if every is not None and every != fmt:
                raise ReplayError(f"--source {every} and --source {fmt}: give one format for "
                                  "every file, and FORMAT=FILE for the files that differ")
            every = fmt
            continue
        if not name:
            raise ReplayError(f"--source {value}: no file after '='; write FORMAT=FILE")
        path = Path(name)
        if per_file.get(path, fmt) != fmt:
            raise ReplayError(f"--source gives {path} two formats: {per_file[path]} and {fmt}")
        per_file[path] = fmt
    return every or "auto", per_file


def detect_file(path: Path, forced: str = "auto", given_as: str = "") -> detect.Detection:
    """The format of a log file from its first lines (or `forced`, named by `given_as`)."""
    sample = _sample(path)
    found = (detect.detect(sample) if forced == "auto"
             else detect.forced(forced, sample, given_as or f"--source {forced}"))
    if found.format is None:
        hint = (f". Name its format with --source FORMAT={path} (FORMAT: "
                f"{', '.join(detect.FORMATS)})" if found.forceable else "")
        raise ReplayError(f"{path}: {found.label}: {found.why}{hint}")
    return found


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    try:
        when = datetime.fromtimestamp(ns / 1e9, UTC)
    except (ValueError, OverflowError, OSError):  # beyond what datetime holds (sources
        return None  # range-check times, so only a record from elsewhere gets here)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_safe(value: Any) -> Any:
    """`value` with what JSON cannot carry made plain: a lone surrogate becomes "?", an int
    beyond 64 bits its decimal string."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return _json_safe(str(value))


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # rare: see _json_safe
        return orjson.dumps(_json_safe(obj))


def _lag_ms(batch: RecordBatch, i: int) -> int | None:
    seen, logged = batch.observed_time_unix_nano[i], batch.time_unix_nano[i]
    return None if seen is None or logged is None else (seen - logged) // 1_000_000


def record_fields(batch: RecordBatch, i: int) -> dict[str, Any]:
    """The normalized audit fields of row i that the record holds (absent ones are left out)."""
    duration = batch.duration_ns[i]
    fields = {
        "time": _iso(batch.time_unix_nano[i]),
        "duration_ms": duration / 1e6 if duration else None,
        "method": batch.method[i],
        "path": batch.path[i],
        "route": batch.route[i],
        "status": batch.status[i],
        "user_id": batch.user_id[i],
        "app_id": batch.app_id[i],
        "request_id": batch.request_id[i],
        "client_address": batch.client_address[i],
        "server_address": batch.server_address[i],
        "user_agent": batch.user_agent[i],
        "body_bytes_sent": batch.body_bytes_sent[i],
        "content_length": batch.content_length[i],
        "upstream_length": batch.upstream_length[i],
        "completed": batch.completed[i],
        "name": batch.name[i],
        "ingest_lag_ms": _lag_ms(batch, i),
        **(batch.attributes[i] or {}),
    }
    return {k: v for k, v in fields.items() if v is not None}


@dataclass
class _Stats:
    records: Counter[str] = field(default_factory=Counter)  # per file
    flagged: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    joined_errors: int = 0


@dataclass
class _Expectations:
    """Nginx requests to audited paths, and the app records seen, for missing_record."""

    requests: dict[bytes, tuple[int | None, dict[str, Any]]] = field(default_factory=dict)
    app_times: dict[bytes, list[int | None]] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)

    def note(self, batch: RecordBatch, audited: Any) -> None:
        self.sources.add(batch.source)
        if batch.source == "nginx":
            # The service's rule: audited path, a request id, and answered by the app.
            for i in expected_app_records(batch, audited):
                self.requests.setdefault(
                    batch.trace_id[i], (batch.time_unix_nano[i], record_fields(batch, i)))
        elif batch.source == "app":
            for i, trace_id in enumerate(batch.trace_id):
                self.app_times.setdefault(trace_id, []).append(batch.time_unix_nano[i])

    def missing(self, window_ns: int) -> Iterator[tuple[bytes, dict[str, Any]]]:
        if not {"nginx", "app"} <= self.sources:
            return
        for trace_id, (when, fields) in self.requests.items():
            times = self.app_times.get(trace_id, ())
            if not any(t is None or when is None or abs(t - when) <= window_ns for t in times):
                yield trace_id, fields


def _chunks(path: Path) -> Iterator[tuple[list[int], list[bytes]]]:
    numbers: list[int] = []
    lines: list[bytes] = []
    for number, line in _lines(path):
        numbers.append(number)
        lines.append(line)
        if len(lines) >= CHUNK_ROWS:
            yield numbers, lines
            numbers, lines = [], []
    if lines:
        yield numbers, lines


def _batches(path: Path, found: detect.Detection, pipeline: Pipeline) -> Iterator[RecordBatch]:
    """Parsed (not yet checked) batches of one file."""
    source = found.format
    assert source is not None  # detect_file raises for an undecided file
    if source == "pgaudit":
        # Multi-line entries (TAB continuations, quoted newlines): the whole file at once.
        numbered = list(_lines(path))
        yield pipeline.parse("pgaudit", [line for _, line in numbered],
                             numbers=[number for number, _ in numbered])
        return
    if source not in CONTAINER_FORMATS:
        for numbers, lines in _chunks(path):
            yield pipeline.parse(source, lines, numbers=numbers)
        return
    if source == container.DOCKER:
        entries = container.recombine_docker(_lines(path))
    else:
        entries = container.recombine_cri(_lines(path))
    inner = found.inner or "app"  # an empty wrapped sample: the lines after it are read as app
    for start in range(0, len(entries), CHUNK_ROWS):
        chunk = entries[start:start + CHUNK_ROWS]
        batch = pipeline.parse(inner, [e.content for e in chunk], numbers=[e.line for e in chunk])
        batch.observed_time_unix_nano = [e.observed_time_unix_nano for e in chunk]
        for i, entry in enumerate(chunk):
            if entry.partial:
                batch.truncation_reasons.setdefault(i, []).append(flags.PARTIAL_LINE)
            if entry.malformed:
                batch.add_flag(i, flags.MALFORMED)
        yield batch


def replay(
    files: list[Path],
    *,
    source: str = "auto",
    file_sources: Mapping[Path, str] | None = None,
    settings: Settings,
    out: IO[bytes],
    err: IO[str],
    window_s: float = 30.0,
    exporter: Any | None = None,
) -> int:
    if source not in SOURCES:
        raise ReplayError(f"--source must be one of {', '.join(SOURCES)} (got {source!r})")
    overrides = _overrides(files, file_sources or {})
    if window_s <= 0:
        raise ReplayError(f"--window must be > 0 seconds (got {window_s})")
    failed: list[Path] = []

    def fail(path: Path, exc: ReplayError) -> None:
        """A file that cannot be read: named on stderr, skipped; the others go on."""
        err.write(f"audit-guard replay: {exc}\n")
        failed.append(path)

    sources: dict[Path, detect.Detection] = {}
    for path in files:
        if not path.is_file():
            fail(path, ReplayError(f"cannot read {path}: "
                                   + ("not a regular file" if path.exists() else "no such file")))
            continue
        own = overrides.get(path)
        try:
            sources[path] = (detect_file(path, own, f"--source {own}={path}") if own
                             else detect_file(path, source))
        except ReplayError as exc:
            fail(path, exc)
    readable = list(sources)
    pipeline = Pipeline(settings)
    audited = settings.audited_path_regex().match
    stats = _Stats()
    expectations = _Expectations()
    progress = _Progress(err, sum(p.stat().st_size for p in readable))
    # Error logs first: their events flag the access records they join, in whatever order the
    # files were given.
    events: dict[Path, list[nginx_error.ErrorEvent]] = {}
    naive_tz = settings.naive_tz()
    for path in readable:
        if sources[path].format == "nginx_error":
            found: list[nginx_error.ErrorEvent] = []
            try:
                for number, line in _lines(path):
                    event = nginx_error.parse_line(number, line, naive_tz)
                    if event is not None:
                        found.append(event)
            except ReplayError as exc:
                fail(path, exc)
            events[path] = found
    errors = ErrorLogIndex((e for evs in events.values() for e in evs),
                           int(window_s * 1_000_000_000))
    for path in readable:
        name = str(path)
        if path in events:
            continue
        try:
            for parsed in _batches(path, sources[path], pipeline):
                if errors and parsed.source == "nginx":
                    errors.apply(parsed)
                batch = pipeline.check(parsed)
                batch.file = [name] * len(batch)
                _write(batch, out, stats, name)
                expectations.note(batch, audited)
                if exporter is not None:
                    # A record without a time gets the replay's time (as the service's receive
                    # time).
                    exporter.export(pipeline.to_traces(batch, time.time_ns()), len(batch))
                progress.advance(batch)
        except ReplayError as exc:  # the records read before the problem are kept
            fail(path, exc)
    progress.done()
    stats.joined_errors = errors.joined
    origin = {id(e): str(p) for p, evs in events.items() for e in evs}
    for event in errors.leftover():
        _write_event(event, out, stats, origin[id(event)])
    for trace_id, fields in expectations.missing(int(window_s * 1_000_000_000)):
        stats.missing += 1
        stats.flags[flags.MISSING_RECORD] += 1
        out.write(_dumps({
            "file": None, "line": None, "source": "app", "trace_id": trace_id.hex(),
            "span_id": missing_span_id(trace_id).hex(),
            "flags": [flags.MISSING_RECORD], "fields": fields,
        }) + b"\n")
    _summary(err, readable, sources, stats)
    if failed:
        err.write(f"audit-guard replay: {len(failed)} file(s) could not be read: "
                  f"{', '.join(map(str, failed))}\n")
        return 2
    return 1 if sum(stats.flagged.values()) or stats.missing else 0


def _overrides(files: list[Path], file_sources: Mapping[Path, str]) -> dict[Path, str]:
    """{file as given on the command line: its forced format}; an override must name one of
    the files (compared after resolving, so ./a.log names a.log)."""
    given = {p.resolve(): p for p in files}
    out: dict[Path, str] = {}
    for path, fmt in file_sources.items():
        if fmt not in detect.FORMATS:
            raise ReplayError(f"--source {fmt}={path}: unknown format {fmt!r}; accepted "
                              f"formats: {', '.join(detect.FORMATS)}")
        if path.resolve() not in given:
            raise ReplayError(f"--source {fmt}={path}: {path} is not one of the files to "
                              f"replay ({', '.join(map(str, files))})")
        out[given[path.resolve()]] = fmt
    return out


def _write_event(event: nginx_error.ErrorEvent, out: IO[bytes], stats: _Stats, name: str) -> None:
    """An error-log event that means a cut but joined no access record: its own record."""
    flag = nginx_error.FLAG_FOR_KIND.get(event.kind or "") or flags.MALFORMED
    ident = f"{name}:{event.line}".encode()
    stats.records[name] += 1
    stats.flagged[name] += 1
    stats.flags[flag] += 1
    fields = {
        "time": _iso(event.time_unix_nano), "level": event.level,
        "connection": event.connection, "method": event.request_method,
        "path": (event.request_uri or "").partition("?")[0] or None,
        "client_address": event.client, "server_address": event.server,
        "upstream": event.upstream, "message": event.message,
    }
    out.write(_dumps({
        "file": name, "line": event.line, "source": "nginx_error",
        "trace_id": blake2b(b"nginx_error:" + ident, digest_size=16).hexdigest(),
        "span_id": blake2b(b"nginx_error-span:" + ident, digest_size=8).hexdigest(),
        "flags": [flag], "fields": {k: v for k, v in fields.items() if v is not None},
    }) + b"\n")


def _write(batch: RecordBatch, out: IO[bytes], stats: _Stats, name: str) -> None:
    if not len(batch):
        return
    chunk = []
    for i in range(len(batch)):
        found = batch.flags.get(i, [])
        if found:
            stats.flagged[name] += 1
            stats.flags.update(found)
        chunk.append(_dumps({
            "file": name,
            "line": batch.line[i],
            "source": batch.source,
            "trace_id": batch.trace_id[i].hex(),
            "span_id": batch.span_id[i].hex(),
            "flags": found,
            "fields": record_fields(batch, i),
        }))
    stats.records[name] += len(batch)
    out.write(b"\n".join(chunk) + b"\n")


class _Progress:
    """A progress line on stderr for large inputs read interactively."""

    def __init__(self, err: IO[str], total: int) -> None:
        self._err, self._total, self._done = err, total, 0
        self._on = total > 20 * 1024 * 1024 and err.isatty()

    def advance(self, batch: RecordBatch) -> None:
        if self._on:  # sizing the batch's lines is work only a shown progress line needs
            self._done += sum(len(r) if isinstance(r, bytes | str) else 0 for r in batch.raw)
            pct = min(100, self._done * 100 // max(self._total, 1))
            bar = "#" * (pct // 4)
            self._err.write(f"\r  replaying [{bar:<25}] {pct:3d}%")
            self._err.flush()

    def done(self) -> None:
        if self._on:
            self._err.write("\n")


def _summary(err: IO[str], files: list[Path], found: dict[Path, detect.Detection],
             stats: _Stats) -> None:
    sources = {path: found[path].format for path in files}
    total = sum(stats.records.values())
    flagged = sum(stats.flagged.values())
    err.write(f"audit-guard replay: {len(files)} file(s), {total} record(s), {flagged} flagged\n")
    width = max([len(str(p)) for p in files] + [4])
    err.write(f"  {'file':<{width}}  {'source':<8}{'records':>9}{'flagged':>9}\n")
    for path in files:
        name = str(path)
        err.write(f"  {name:<{width}}  {sources[path]:<8}{stats.records[name]:>9}"
                  f"{stats.flagged[name]:>9}\n")
    err.write("  read as:\n")
    for path in files:
        err.write(f"    {path}: {found[path]}\n")
    if stats.joined_errors:
        err.write(f"  {stats.joined_errors} error-log event(s) joined to their access record\n")
    for path in files:
        if sources[path] == "nginx_error":
            continue  # its events show on the access records they joined
        if not stats.records[str(path)] and path.stat().st_size:
            hint = ("no pgaudit AUDIT line: is pgaudit loaded and pgaudit.log set?"
                    if sources[path] == "pgaudit" else "is --source right?")
            err.write(f"  warning: {path} has lines but no {sources[path]} record; {hint}\n")
    if stats.missing:
        err.write(f"  {stats.missing} audited request(s) with no app audit record in the window\n")
    if stats.flags:
        err.write("  flags:\n")
        for flag, count in stats.flags.most_common():
            err.write(f"    {flag:<40}{count:>9}\n")
