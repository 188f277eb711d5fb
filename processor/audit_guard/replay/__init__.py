"""`audit-guard replay`: the offline, incident-time twin of the service.

Reads raw log files, runs the service's pipeline over them — the same stages, the stateful ones
included (duplicates, the error-log join, request reconciliation), driven by the records' own
times in time order across the files (audit_guard.replay.engine) — and writes JSON Lines to
stdout, one object per input record:

    {"file": str, "line": int, "source": str, "trace_id": hex32, "span_id": hex16,
     "flags": [str], "fields": {...normalized audit fields present in the record...}}

plus, once an app record was seen (as the service arms), one synthetic object per Nginx request
to an audited path that the app answered (the service's rule: audit_guard.correlate.reconcile)
with no app audit record within the window (`reconcile.window_s`, or --window):

    {"file": null, "line": null, "source": "app", "trace_id": <the request's>, "span_id": ...,
     "flags": ["missing_record"], "fields": {...the Nginx request's fields...}}

Formats are detected per file (audit_guard.sources.detect: on what only one format writes, never
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

import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .. import flags
from ..config import Settings
from ..correlate.reconcile import missing_span_id
from ..pipeline import Pipeline
from ..record import RecordBatch
from ..sources import detect, nginx_error
from .engine import Cursor, ReplayEngine, replay_reconciler
from .files import (
    SOURCES,
    ReplayError,
    batches,
    detect_file,
    overrides,
    parse_source_options,
    read_lines,
)
from .output import Progress, ReplayStats, dumps, record_fields, summary, write_batch, write_event

__all__ = ["ReplayError", "detect_file", "parse_source_options", "record_fields", "replay"]


def replay(
    files: list[Path],
    *,
    source: str = "auto",
    file_sources: Mapping[Path, str] | None = None,
    settings: Settings,
    out: IO[bytes],
    err: IO[str],
    window_s: float | None = None,
    exporter: Any | None = None,
) -> int:
    """Replay `files`; returns the exit code. `window_s` (--window) sets both the reconcile
    and the error-log join window; by default they are the settings' own."""
    if source not in SOURCES:
        raise ReplayError(f"--source must be one of {', '.join(SOURCES)} (got {source!r})")
    forced = overrides(files, file_sources or {})
    if window_s is not None:
        if window_s <= 0:
            raise ReplayError(f"--window must be > 0 seconds (got {window_s})")
        settings = settings.model_copy(update={
            "reconcile": settings.reconcile.model_copy(update={
                "window_s": window_s,
                "late_horizon_s": max(window_s, settings.reconcile.late_horizon_s)}),
            "error_join_window_s": window_s})
    failed: list[Path] = []

    def fail(path: Path, exc: ReplayError) -> None:
        """A file that cannot be read: named on stderr, skipped; the others go on."""
        err.write(f"audit-guard replay: {exc}\n")
        failed.append(path)

    found = _detect_all(files, source, forced, fail)
    readable = list(found)
    stats = ReplayStats()
    names: dict[int, str] = {}  # id(error event) → its file
    engine = _engine(Pipeline(settings, reconciler=replay_reconciler(settings)), settings, out,
                     stats, exporter, names)
    for path in readable:
        if found[path].format == "nginx_error":
            events = _events(path, settings, fail)
            names.update((id(e), str(path)) for e in events)
            stats.records[str(path)] += 0
            engine.add_events(events)
    progress = Progress(err, sum(p.stat().st_size for p in readable))
    cursors = [Cursor(str(path), _guarded(path, found[path], engine.pipeline, fail, progress))
               for path in readable if found[path].format != "nginx_error"]
    engine.run(cursors)
    progress.done()
    stats.joined_errors = engine.joined
    stats.silences = engine.silences
    summary(err, readable, found, stats)
    if failed:
        err.write(f"audit-guard replay: {len(failed)} file(s) could not be read: "
                  f"{', '.join(map(str, failed))}\n")
        return 2
    return 1 if sum(stats.flagged.values()) or stats.missing else 0


def _detect_all(files: list[Path], source: str, forced: Mapping[Path, str], fail: Any
                ) -> dict[Path, detect.Detection]:
    found: dict[Path, detect.Detection] = {}
    for path in files:
        if not path.is_file():
            fail(path, ReplayError(f"cannot read {path}: "
                                   + ("not a regular file" if path.exists() else "no such file")))
            continue
        own = forced.get(path)
        try:
            found[path] = (detect_file(path, own, f"--source {own}={path}") if own
                           else detect_file(path, source))
        except ReplayError as exc:
            fail(path, exc)
    return found


def _events(path: Path, settings: Settings, fail: Any) -> list[nginx_error.ErrorEvent]:
    events: list[nginx_error.ErrorEvent] = []
    naive_tz = settings.naive_tz()
    try:
        for number, line in read_lines(path):
            event = nginx_error.parse_line(number, line, naive_tz)
            if event is not None:
                event.at = number
                events.append(event)
    except ReplayError as exc:  # the events read before the problem are kept
        fail(path, exc)
    return events


def _guarded(path: Path, found: detect.Detection, pipeline: Pipeline, fail: Any,
             progress: Progress) -> Any:
    """The file's parsed batches, named; a read error ends the file (what was read is kept)."""
    name = str(path)
    try:
        for batch in batches(path, found, pipeline):
            batch.file = [name] * len(batch)
            progress.advance(batch)
            yield batch
    except ReplayError as exc:
        fail(path, exc)


def _engine(pipeline: Pipeline, settings: Settings, out: IO[bytes], stats: ReplayStats,
            exporter: Any | None, names: dict[int, str]) -> ReplayEngine:
    """The engine, writing what it decides as it decides it."""

    def on_batch(batch: RecordBatch, spans: list[bytes]) -> None:
        name = batch.file[0] if len(batch) else ""
        write_batch(batch, out, stats, name or "")
        if exporter is not None:
            # A record without a time gets the replay's time (as the service's receive time).
            exporter.export(pipeline.to_traces(batch, time.time_ns()), len(batch))

    def on_missing(batch: RecordBatch, fields: list[dict[str, Any]]) -> None:
        for i, request in enumerate(fields):
            trace_id = batch.trace_id[i]
            stats.missing += 1
            stats.flags[flags.MISSING_RECORD] += 1
            out.write(dumps({
                "file": None, "line": None, "source": "app", "trace_id": trace_id.hex(),
                "span_id": missing_span_id(trace_id).hex(),
                "flags": [flags.MISSING_RECORD], "fields": request,
            }) + b"\n")
        if exporter is not None:
            exporter.export(pipeline.to_traces(batch, time.time_ns()), len(batch))

    def on_event(event: nginx_error.ErrorEvent, joined: tuple[bytes, bytes] | None) -> None:
        write_event(event, out, stats, names.get(id(event), ""), joined)

    return ReplayEngine(pipeline, settings, on_batch=on_batch, on_missing=on_missing,
                        on_event=on_event, fields_of=record_fields, spans=False)
