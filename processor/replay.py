"""`audit-guard replay`: the offline, incident-time twin of the service.

Reads raw log files, runs the service's pipeline over them (the same parse → check → correlate
stages, in the same batches), and writes JSON Lines to stdout, one object per input record:

    {"file": str, "line": int, "source": str, "trace_id": hex32, "span_id": hex16,
     "flags": [str], "fields": {...normalized audit fields present in the record...}}

A human summary goes to stderr. Exit 0 when nothing is flagged, 1 when anything is, 2 on a usage
or unreadable-input error (and when --export cannot hand the spans on).
"""

from __future__ import annotations

import gzip
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from .config import Settings
from .pipeline import CHUNK_ROWS, Pipeline
from .record import RecordBatch
from .spans import SpanBatch

__all__ = ["ReplayError", "detect_source", "record_fields", "replay"]

SOURCES = ("auto", "nginx", "app", "docker", "cri", "pgaudit")
SUPPORTED = ("nginx",)
_NGINX_HINTS = (b'"request_method"', b'"request_uri"', b'"request_id"', b'"remote_addr"',
                b'"status"', b'"uri"', b'"msec"', b'"body_bytes_sent"')


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
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ReplayError(f"cannot read {path}: {exc}") from None


def detect_source(path: Path) -> str:
    """The format of a log file, from its first non-empty lines."""
    sample = []
    for _, line in _lines(path):
        sample.append(line)
        if len(sample) >= 20:
            break
    if not sample:
        return "nginx"  # an empty file has no records; any parser will do
    hits = sum(1 for line in sample if line.lstrip().startswith(b"{")
               and sum(h in line for h in _NGINX_HINTS) >= 2)
    if hits * 2 >= len(sample):
        return "nginx"
    raise ReplayError(
        f"{path}: format not recognized from its first lines; this version reads Nginx JSON "
        "access logs (give --source nginx to force it)"
    )


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


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
    }
    return {k: v for k, v in fields.items() if v is not None}


@dataclass
class _Stats:
    records: Counter[str] = field(default_factory=Counter)  # per file
    flagged: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)


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


def replay(
    files: list[Path],
    *,
    source: str = "auto",
    settings: Settings,
    out: IO[bytes],
    err: IO[str],
    exporter: Any | None = None,
) -> int:
    if source not in SOURCES:
        raise ReplayError(f"--source must be one of {', '.join(SOURCES)} (got {source!r})")
    if source not in ("auto", *SUPPORTED):
        raise ReplayError(f"--source {source}: not supported by this version yet "
                          f"(supported: {', '.join(SUPPORTED)})")
    for path in files:
        if not path.is_file():
            raise ReplayError(f"cannot read {path}: no such file")
    sources = {path: source if source != "auto" else detect_source(path) for path in files}
    pipeline = Pipeline(settings)
    stats = _Stats()
    progress = _Progress(err, sum(p.stat().st_size for p in files))
    for path in files:
        name = str(path)
        for numbers, lines in _chunks(path):
            batch = pipeline.check(pipeline.parse_bodies(list(lines)))
            batch.file = [name] * len(batch)
            batch.line = numbers
            _write(batch, out, stats, name)
            if exporter is not None:
                spans = SpanBatch(settings.nginx_service_name)
                # A record without a time gets the replay's time (as the service's receive time).
                spans.spans = pipeline.span_builder.spans(batch, now_ns=time.time_ns())
                exporter.export(spans.request_bytes(), len(batch))
            progress.advance(sum(map(len, lines)) + len(lines))
    progress.done()
    _summary(err, files, sources, stats)
    return 1 if sum(stats.flagged.values()) else 0


def _write(batch: RecordBatch, out: IO[bytes], stats: _Stats, name: str) -> None:
    chunk = []
    for i in range(len(batch)):
        found = batch.flags.get(i, [])
        if found:
            stats.flagged[name] += 1
            stats.flags.update(found)
        chunk.append(orjson.dumps({
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

    def advance(self, nbytes: int) -> None:
        if self._on:
            self._done += nbytes
            pct = min(100, self._done * 100 // max(self._total, 1))
            bar = "#" * (pct // 4)
            self._err.write(f"\r  replaying [{bar:<25}] {pct:3d}%")
            self._err.flush()

    def done(self) -> None:
        if self._on:
            self._err.write("\n")


def _summary(err: IO[str], files: list[Path], sources: dict[Path, str], stats: _Stats) -> None:
    total = sum(stats.records.values())
    flagged = sum(stats.flagged.values())
    err.write(f"audit-guard replay: {len(files)} file(s), {total} record(s), {flagged} flagged\n")
    width = max([len(str(p)) for p in files] + [4])
    err.write(f"  {'file':<{width}}  {'source':<8}{'records':>9}{'flagged':>9}\n")
    for path in files:
        name = str(path)
        err.write(f"  {name:<{width}}  {sources[path]:<8}{stats.records[name]:>9}"
                  f"{stats.flagged[name]:>9}\n")
    if stats.flags:
        err.write("  flags:\n")
        for flag, count in stats.flags.most_common():
            err.write(f"    {flag:<40}{count:>9}\n")
