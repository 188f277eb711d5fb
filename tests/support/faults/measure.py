"""What one row wrote, what the backend got, and how the two compare.

- written: every access line in every file of nginx's log dir (live, rotated, gzipped),
  identified by its request id (the nginx span's trace id, audit_guard/correlate/traces.py);
- delivered: distinct request ids with at least one nginx span (`audit.source` = nginx) at the
  backend;
- lost: written, never delivered;
- rewritten: a record whose delivered copies disagree (span id or `audit.flags`), that is
  flagged `duplicate` though written once, or whose span id or flags differ from the
  reference: `audit-guard replay` over the very same files. replay runs the service's pipeline
  over the files with an event-time clock, so it is what a fault-free chain reports for exactly
  these lines (a fault-free baseline run could not be compared record by record: every
  request id is random);
- duplicates: extra copies identical to the first (an allowed re-send);
- unlogged: answered requests whose access line is in no file, so no reader could see them.
  Only a fault that loses lines itself may cause them (logrotate's copytruncate: what nginx
  writes between the copy and the truncation is gone); one the app logged inside such a
  fault's window is `excused`, any other fails the row.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from demo.procs import repo_root

from .backend import RecordReader

__all__ = ["Delivered", "Reference", "RowResult", "compare", "log_files", "unlogged_requests",
           "written_ids"]

_REQUEST_ID = re.compile(rb'"request_id":"([0-9a-f]{32})"')
Copy = tuple[str, tuple[str, ...]]  # (span id hex, audit.flags)


def log_files(directory: Path, stem: str) -> list[Path]:
    """`stem`, `stem.1`, `stem.2.gz`, … oldest first (logrotate's numbering)."""
    def age(path: Path) -> int:
        suffix = path.name[len(stem):].removesuffix(".gz").lstrip(".")
        return int(suffix) if suffix.isdigit() else 0

    files = [p for p in directory.glob(f"{stem}*") if p.name == stem or
             re.fullmatch(re.escape(stem) + r"\.\d+(\.gz)?", p.name)]
    return sorted(files, key=age, reverse=True)


def unlogged_requests(app_files: list[Path], written: Counter[str],
                      windows: list[tuple[float, float]], before_s: float = 1.0
                      ) -> tuple[list[str], list[str]]:
    """Requests the app logged (its JSON lines: `trace_id` is nginx's request id, `ts` when
    it answered) whose access line is in no file: (inside a window, the others), as
    "<id> at <ts>". A window is (start, end) in Unix seconds; nginx writes its line after the
    app answered, so an app time up to `before_s` before a window's start counts as inside."""
    inside: list[str] = []
    outside: list[str] = []
    for path in app_files:
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    obj = orjson.loads(line)
                    rid, ts = obj["trace_id"], obj["ts"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                if rid in written:
                    continue
                at = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
                seen = f"{rid} at {ts}"
                if any(start - before_s <= at <= end for start, end in windows):
                    inside.append(seen)
                else:
                    outside.append(seen)
    return inside, outside


def written_ids(files: list[Path]) -> tuple[Counter[str], int]:
    """Request id → number of lines carrying it; and the count of lines without one."""
    ids: Counter[str] = Counter()
    unidentified = 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            for line in fh:
                m = _REQUEST_ID.search(line)
                if m:
                    ids[m.group(1).decode()] += 1
                elif line.strip():
                    unidentified += 1
    return ids, unidentified


class Delivered:
    """The nginx spans the backend accepted, by trace id (read incrementally)."""

    def __init__(self, record_file: Path) -> None:
        self._reader = RecordReader(record_file)
        self.copies: dict[str, list[Copy]] = {}
        self.other_spans = 0

    def update(self) -> int:
        """Read what arrived since the last call; the number of new nginx spans."""
        new = 0
        for request in self._reader.new_requests():
            new += self._add(request)
        return new

    def _add(self, request: ExportTraceServiceRequest) -> int:
        added = 0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    source, flags = None, ()
                    for kv in span.attributes:
                        if kv.key == "audit.source":
                            source = kv.value.string_value
                        elif kv.key == "audit.flags":
                            flags = tuple(v.string_value for v in kv.value.array_value.values)
                    if source != "nginx":
                        self.other_spans += 1
                        continue
                    self.copies.setdefault(span.trace_id.hex(), []).append(
                        (span.span_id.hex(), flags))
                    added += 1
        return added


@dataclass
class Reference:
    """`audit-guard replay` over the row's files: trace id → (span id, flags) of nginx records."""

    records: dict[str, Copy] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of(cls, files: list[Path], timeout: float = 600) -> Reference:
        argv = [sys.executable, "-m", "audit_guard.cli", "replay", *map(str, files)]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=repo_root())
        except subprocess.TimeoutExpired:
            return cls(error=f"replay timed out after {timeout:.0f}s")
        if done.returncode not in (0, 1):
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            return cls(error=f"replay exited {done.returncode}: {' | '.join(tail)}")
        ref = cls()
        for line in done.stdout.splitlines():
            row = orjson.loads(line)
            if row.get("source") == "nginx" and row.get("trace_id"):
                ref.records[row["trace_id"]] = (row.get("span_id") or "",
                                                tuple(row.get("flags") or ()))
        return ref


@dataclass
class RowResult:
    name: str
    sent: int = 0
    written: int = 0
    # Answered requests whose line is in no log file (e.g. written between logrotate's copy
    # and truncate): lost before the chain could read them.
    unlogged: int = 0
    # Of those, the ones the app logged inside a window where the fault itself loses lines.
    unlogged_excused: int = 0
    delivered: int = 0
    lost: int = 0
    rewritten: int = 0
    spooled: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the row could not run to the end (the harness's own failure)

    @property
    def ok(self) -> bool:
        return (self.error is None and self.written > 0 and self.lost == 0
                and self.rewritten == 0 and self.unlogged == self.unlogged_excused)


def compare(result: RowResult, written: Counter[str], delivered: Delivered,
            reference: Reference, examples: int = 3) -> None:
    """Fill written/delivered/lost/rewritten/duplicates of `result`; examples go to notes."""
    result.written = len(written)
    lost: list[str] = []
    rewritten: list[str] = []
    for rid, lines in written.items():
        copies = delivered.copies.get(rid)
        if not copies:
            lost.append(rid)
            continue
        first = copies[0]
        why = None
        if any(c != first for c in copies):
            why = f"copies differ: {sorted(set(copies))}"
        elif "duplicate" in first[1] and lines == 1:
            why = f"flagged duplicate, written once: {first}"
        elif rid in reference.records:
            ref_span, ref_flags = reference.records[rid]
            if ref_span != first[0] or set(ref_flags) != set(first[1]):
                why = f"backend {first} vs replay {(ref_span, ref_flags)}"
        if why:
            rewritten.append(f"{rid}: {why}")
        else:
            result.duplicates += len(copies) - 1
    result.delivered = sum(1 for rid in written if rid in delivered.copies)
    result.lost, result.rewritten = len(lost), len(rewritten)
    unknown = len(delivered.copies.keys() - written.keys())
    if unknown:
        result.notes.append(f"{unknown} delivered trace ids match no written line")
    if reference.error:
        result.notes.append(f"no replay reference ({reference.error}); rewritten compares "
                            "copies only")
    else:
        missing = sum(1 for rid in written if rid not in reference.records)
        if missing:
            result.notes.append(f"replay reported no nginx record for {missing} written ids")
    if lost:
        result.notes.append("lost e.g. " + ", ".join(lost[:examples]))
    result.notes.extend("rewritten " + r for r in rewritten[:examples])
