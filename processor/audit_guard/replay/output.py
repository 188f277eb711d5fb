"""Replay's output: one JSON object per record on stdout, a summary for people on stderr."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path
from typing import IO, Any

import orjson

from .. import flags
from ..record import RecordBatch
from ..sources import detect, nginx_error

__all__ = ["Progress", "ReplayStats", "dumps", "record_fields", "summary", "write_batch",
           "write_event"]


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


def dumps(obj: dict[str, Any]) -> bytes:
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
class ReplayStats:
    records: Counter[str] = field(default_factory=Counter)  # per file
    flagged: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    joined_errors: int = 0
    # (source, its last record before, its first record after; None: until the end)
    silences: list[tuple[str, int, int | None]] = field(default_factory=list)


def write_event(event: nginx_error.ErrorEvent, out: IO[bytes], stats: ReplayStats, name: str,
                joined: tuple[bytes, bytes] | None = None) -> None:
    """An error-log event that means a cut: its own record when it joined no access record;
    under the access record's trace (`joined`: its trace and span id) when it came after it."""
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
    trace_id = (joined[0].hex() if joined is not None
                else blake2b(b"nginx_error:" + ident, digest_size=16).hexdigest())
    out.write(dumps({
        "file": name, "line": event.line, "source": "nginx_error", "trace_id": trace_id,
        "span_id": blake2b(b"nginx_error-span:" + ident, digest_size=8).hexdigest(),
        "flags": [flag], "fields": {k: v for k, v in fields.items() if v is not None},
    }) + b"\n")


def write_batch(batch: RecordBatch, out: IO[bytes], stats: ReplayStats, name: str) -> None:
    if not len(batch):
        return
    chunk = []
    for i in range(len(batch)):
        found = batch.flags.get(i, [])
        if found:
            stats.flagged[name] += 1
            stats.flags.update(found)
        chunk.append(dumps({
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


class Progress:
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


def summary(err: IO[str], files: list[Path], found: dict[Path, detect.Detection],
             stats: ReplayStats) -> None:
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
    for source, since, until in stats.silences:
        quiet = (f"until {_iso(until)} ({(until - since) / 1e9:.0f} s)" if until is not None
                 else "until the end of the input")
        err.write(f"  silent: {source} wrote nothing from {_iso(since)} {quiet} while traffic "
                  "went on\n")
    if stats.flags:
        err.write("  flags:\n")
        for flag, count in stats.flags.most_common():
            err.write(f"    {flag:<40}{count:>9}\n")
