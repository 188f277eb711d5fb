"""`audit-guard resend`: deliver the dead-letter spool once downstream accepts it again.

Entries go oldest first, each exactly as it was spooled (the same serialized request, so the
same span ids: a re-send is idempotent for the backend). An entry is removed only after
downstream accepted all of it; the first failure stops the run with what failed, what remains
and what to do. A corrupt entry file is reported, left in `corrupt/` and skipped.

Exit codes: 0 the spool is empty at the end; 1 entries remain, or corrupt files wait in
`corrupt/` for an operator; 2 usage or configuration error (the CLI's job).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol, TextIO

from .exporter import DownstreamRejected, DownstreamUnavailable, ExportOutcome
from .spool import DeadLetterSpool, SpoolCorrupt, SpoolEntry, SpoolSummary

__all__ = ["Exporter", "describe", "resend"]


class Exporter(Protocol):
    def export(self, request: bytes, span_count: int) -> ExportOutcome: ...


def _time(ns: int | None) -> str:
    if ns is None:
        return "–"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def describe(summary: SpoolSummary) -> str:
    """The spool in a few lines, for an operator."""
    full = summary.bytes / summary.max_bytes if summary.max_bytes else 0.0
    lines = [f"dead-letter spool {summary.directory}: {summary.entries} entries, "
             f"{summary.spans} spans, {_size(summary.bytes)} ({full:.1%} of deadletter.max_bytes "
             f"{_size(summary.max_bytes)})"]
    if summary.entries:
        lines.append(f"  oldest spooled {_time(summary.oldest_unix_nano)}")
        reasons = sorted(summary.reasons.items(), key=lambda kv: -kv[1])
        lines.append("  reasons: " + "; ".join(f"{r} ({n} spans)" for r, n in reasons))
    if summary.corrupt_files:
        lines.append(f"  {summary.corrupt_files} corrupt file(s) set aside in "
                     f"{summary.directory / 'corrupt'} (never resent; see the service log)")
    return "\n".join(lines)


def _remaining(spool: DeadLetterSpool) -> str:
    usage = spool.usage()
    return f"{usage.entries} entries ({usage.spans} spans) remain in {spool.directory}"


def resend(spool: DeadLetterSpool, exporter: Exporter | None, *, endpoint: str, out: TextIO,
           dry_run: bool = False) -> int:
    """Send every entry oldest first; see the module docstring for the exit codes."""
    print(describe(spool.summary()), file=out)
    entries = spool.entries()
    if dry_run or exporter is None:
        for entry in entries:
            print(f"  {entry.path.name}: {entry.spans} spans, spooled "
                  f"{_time(entry.spooled_unix_nano)}, reason {entry.reason}", file=out)
        print("dry run: nothing sent", file=out)
        return 0 if not entries else 1
    if not entries:
        print("nothing to resend", file=out)
        return 0
    print(f"resending {len(entries)} entries oldest first to {endpoint}", file=out)
    delivered = spans = 0
    for entry in entries:
        try:
            payload = spool.read(entry)
        except SpoolCorrupt as exc:
            print(f"  SKIPPED {exc}", file=out)
            continue
        except FileNotFoundError:
            continue  # delivered meanwhile by another `resend`
        failure = _send(exporter, entry, payload)
        if failure is not None:
            print(f"audit-guard resend: STOPPED at {entry.path.name} ({entry.spans} spans, "
                  f"spooled {_time(entry.spooled_unix_nano)}, first refused as "
                  f"{entry.reason!r}): downstream {endpoint} {failure}", file=out)
            print(f"  {delivered} entries ({spans} spans) delivered this run; "
                  f"{_remaining(spool)}. Nothing was lost: entries are removed only once "
                  f"accepted. Fix the cause, then run `audit-guard resend` again.", file=out)
            return 1
        spool.remove(entry)
        delivered += 1
        spans += entry.spans
        print(f"  delivered {entry.path.name}: {entry.spans} spans", file=out)
    usage = spool.usage()
    print(f"done: {delivered} entries ({spans} spans) delivered; {_remaining(spool)}", file=out)
    corrupt = spool.corrupt_files()  # found now, at start-up, or by an earlier run
    if corrupt:
        print(f"  {corrupt} corrupt entry file(s) are set aside in {spool.corrupt_dir} and were "
              f"NOT delivered: inspect them (`head -c 300 FILE`), then repair or delete them",
              file=out)
        return 1
    return 0 if usage.entries == 0 else 1


def _send(exporter: Exporter, entry: SpoolEntry, payload: bytes) -> str | None:
    """None when downstream accepted every span, else what went wrong (for the operator). The
    exporter must have no spool: a refused entry stays where it is instead of being copied."""
    try:
        exporter.export(payload, entry.spans)  # built without a spool: a refusal raises
    except DownstreamUnavailable as exc:
        return (f"did not accept it in time ({exc}). Is it up and reachable "
                f"(exporter.endpoint, or --endpoint)? See its log.")
    except DownstreamRejected as exc:
        return (f"refused it for good again: {exc.reason}. It will keep refusing these spans "
                f"until the cause is fixed: check the backend's log and limits (message size, "
                f"authentication headers, attribute limits).")
    return None
