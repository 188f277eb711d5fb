"""The dead-letter spool: span requests downstream refused for good, kept on local disk.

"Never acknowledge and drop": when downstream rejects spans permanently (a partial success naming
rejected spans, or a code in `exporter.permanent_codes`), the serialized ExportTraceServiceRequest
is written here before the Export is acknowledged, and `audit-guard resend` sends it again once
the cause is fixed.

One file per entry, named `<spooled_unix_nano:020d>-<seq>-<token>.dlq` so that a directory
listing sorts oldest first. A file is self-describing and can be read with `head -c 300`:

    AUDIT-GUARD-DEADLETTER 1\\n
    {"spans": 12, "reason": "partial_success: ...", "spooled_unix_nano": ..., "payload_bytes": N,
     "crc32": C}\\n
    <N bytes: the ExportTraceServiceRequest protobuf, exactly as it was sent>

Durability: the entry is written to a `.tmp-*` file held under an exclusive flock, fsynced, renamed
into place, then the directory is fsynced; only then does `append` return. A crash leaves either
a complete entry or a temp file, which the next start removes (its flock is free once the writer
is dead, so a temp file of a writer still running — `resend` next to `serve` — is left alone).
A file that is not a complete entry (bad header, wrong length, checksum mismatch) is moved to
`corrupt/` with an error naming it; it never stops the service or `resend`.

The spool is shared between processes (`serve` appends while `resend` removes): every listing
reads the directory again, and headers are parsed once per file name and cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CORRUPT_DIR", "DeadLetterSpool", "SpoolCorrupt", "SpoolEntry", "SpoolFull", "SpoolSummary",
    "SpoolUsage", "watch_spool",
]

log = logging.getLogger(__name__)

MAGIC = b"AUDIT-GUARD-DEADLETTER 1\n"
SUFFIX = ".dlq"
TMP_PREFIX = ".tmp-"
CORRUPT_DIR = "corrupt"
MAX_REASON_CHARS = 1024  # a downstream error message can be long; the header stays small
_MAX_HEADER = len(MAGIC) + MAX_REASON_CHARS * 6 + 512  # JSON-escaped reason + the numbers


class SpoolFull(OSError):
    """The spool holds max_bytes already: the caller must NOT drop the spans; it answers
    UNAVAILABLE upstream instead, so the collector keeps them in its queue."""


class SpoolCorrupt(ValueError):
    """An entry file is not a complete entry; it was moved to `corrupt/` (the message says
    where)."""


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    spans: int
    reason: str
    spooled_unix_nano: int
    size: int  # bytes on disk, header included


@dataclass(frozen=True)
class SpoolUsage:
    entries: int
    spans: int
    bytes: int


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(payload: bytes, spans: int, reason: str, now_ns: int) -> bytes:
    header = json.dumps({
        "spans": spans, "reason": reason[:MAX_REASON_CHARS], "spooled_unix_nano": now_ns,
        "payload_bytes": len(payload), "crc32": zlib.crc32(payload),
    }, separators=(",", ":")).encode()
    return MAGIC + header + b"\n" + payload


def _parse_header(path: Path) -> tuple[SpoolEntry, int, int]:
    """(entry, payload offset, crc32) from a file's header; ValueError says what is wrong."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_MAX_HEADER)
    if not head.startswith(MAGIC):
        raise ValueError(f"does not start with {MAGIC.strip().decode()!r}")
    end = head.find(b"\n", len(MAGIC))
    if end < 0:
        raise ValueError("header line is cut or too long")
    try:
        meta = json.loads(head[len(MAGIC):end])
        spans, reason = int(meta["spans"]), str(meta["reason"])
        spooled, length, crc = (int(meta["spooled_unix_nano"]), int(meta["payload_bytes"]),
                                int(meta["crc32"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"header is not valid: {exc}") from None
    offset = end + 1
    if size != offset + length:
        raise ValueError(f"holds {size - offset} payload bytes, its header says {length} "
                         f"(cut short or appended to)")
    return SpoolEntry(path, spans, reason, spooled, size), offset, crc


@dataclass(frozen=True)
class SpoolSummary:
    """What the status page, /api/status and `resend` show about the spool."""

    directory: Path
    max_bytes: int
    entries: int
    spans: int
    bytes: int
    oldest_unix_nano: int | None
    reasons: dict[str, int]  # reason → spans
    corrupt_files: int  # files moved aside to corrupt/ (never resent)


class DeadLetterSpool:
    """A bounded directory of entries; thread-safe, shared safely with other processes."""

    def __init__(self, directory: Path, max_bytes: int,
                 on_change: Callable[[SpoolUsage], None] | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.corrupt_dir = self.directory / CORRUPT_DIR
        # Called with the new usage after every append / remove (serve: the gauges).
        self.on_change = on_change
        self._lock = threading.Lock()
        self._seq = 0
        # file name → (entry, payload offset, crc32): parsed once, files never change in place
        self._known: dict[str, tuple[SpoolEntry, int, int]] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._remove_stale_temp_files()
            usage = self._scan()
        self._changed(usage)

    # -- writing ------------------------------------------------------------------------------
    def append(self, payload: bytes, spans: int, reason: str, now_ns: int) -> SpoolEntry:
        """Durable on return. SpoolFull when it would exceed max_bytes; OSError (ENOSPC, EIO…)
        when the disk refuses — never a partial entry either way."""
        data = _encode(payload, spans, reason, now_ns)
        with self._lock:
            used = self._scan()
            if used.bytes + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"dead-letter spool {self.directory} is full: it holds {used.bytes} bytes in "
                    f"{used.entries} entries and {len(data)} more would pass deadletter.max_bytes="
                    f"{self.max_bytes}; run `audit-guard resend` once downstream accepts them, "
                    f"or raise deadletter.max_bytes")
            self._seq += 1
            name = f"{now_ns:020d}-{self._seq:08d}-{secrets.token_hex(4)}{SUFFIX}"
            final = self.directory / name
            tmp = self.directory / (TMP_PREFIX + name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                try:
                    # Held until renamed: tells _remove_stale_temp_files the writer is alive.
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                    os.rename(tmp, final)
                finally:
                    os.close(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            try:
                _fsync_dir(self.directory)
            except OSError:
                # Not known to be durable: take it back so the caller does not acknowledge.
                with contextlib.suppress(OSError):
                    final.unlink()
                raise
            entry = SpoolEntry(final, spans, reason[:MAX_REASON_CHARS], now_ns, len(data))
            self._known[name] = (entry, len(data) - len(payload), zlib.crc32(payload))
            usage = self._totals()
        self._changed(usage)
        return entry

    def remove(self, entry: SpoolEntry) -> None:
        """Durable on return; an entry already gone (another process removed it) is fine."""
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            _fsync_dir(self.directory)
            self._known.pop(entry.path.name, None)
            usage = self._totals()
        self._changed(usage)

    # -- reading ------------------------------------------------------------------------------
    def entries(self) -> list[SpoolEntry]:
        """Oldest first."""
        with self._lock:
            self._scan()
            found = [known[0] for known in self._known.values()]
        return sorted(found, key=lambda e: (e.spooled_unix_nano, e.path.name))

    def read(self, entry: SpoolEntry) -> bytes:
        """The payload. SpoolCorrupt (the file was moved to corrupt/) when it does not check
        out; FileNotFoundError when another process removed it meanwhile."""
        try:
            parsed, offset, crc = _parse_header(entry.path)
            with entry.path.open("rb") as f:
                f.seek(offset)
                payload = f.read()
            if zlib.crc32(payload) != crc:
                raise ValueError("payload checksum (crc32) does not match its header")
        except ValueError as exc:
            with self._lock:
                where = self._quarantine(entry.path, str(exc))
            raise SpoolCorrupt(f"dead-letter entry {entry.path.name} is corrupt ({exc}); "
                               f"moved to {where}") from None
        return payload

    def usage(self) -> SpoolUsage:
        with self._lock:
            return self._scan()

    def summary(self) -> SpoolSummary:
        found = self.entries()
        reasons: dict[str, int] = {}
        for entry in found:
            reasons[entry.reason] = reasons.get(entry.reason, 0) + entry.spans
        return SpoolSummary(
            self.directory, self.max_bytes, len(found), sum(e.spans for e in found),
            sum(e.size for e in found), found[0].spooled_unix_nano if found else None,
            reasons, self.corrupt_files())

    def corrupt_files(self) -> int:
        """How many files were moved aside to corrupt/ (now or by an earlier run)."""
        try:
            return sum(1 for _ in self.corrupt_dir.iterdir())
        except FileNotFoundError:
            return 0

    # -- internals (called with the lock held) ------------------------------------------------
    def _scan(self) -> SpoolUsage:
        """Re-read the directory listing: new files are parsed, vanished ones forgotten."""
        names = {n for n in os.listdir(self.directory)
                 if n.endswith(SUFFIX) and not n.startswith(TMP_PREFIX)}
        for gone in self._known.keys() - names:
            del self._known[gone]
        for name in sorted(names - self._known.keys()):
            path = self.directory / name
            try:
                self._known[name] = _parse_header(path)
            except FileNotFoundError:
                continue  # removed by another process between listdir and open
            except (ValueError, OSError) as exc:
                self._quarantine(path, str(exc))
        return self._totals()

    def _totals(self) -> SpoolUsage:
        spans = total = 0
        for entry, _, _ in self._known.values():
            spans += entry.spans
            total += entry.size
        return SpoolUsage(len(self._known), spans, total)

    def _quarantine(self, path: Path, why: str) -> Path:
        self.corrupt_dir.mkdir(exist_ok=True)
        target = self.corrupt_dir / path.name
        if target.exists():  # keep the earlier evidence too
            target = self.corrupt_dir / f"{path.name}.{secrets.token_hex(4)}"
        try:
            os.rename(path, target)
            _fsync_dir(self.directory)
            _fsync_dir(self.corrupt_dir)
        except FileNotFoundError:
            pass  # already moved or removed by another process
        self._known.pop(path.name, None)
        log.error("dead-letter spool: %s is not a complete entry (%s); moved it to %s — its "
                  "spans are NOT resent. Inspect it (`head -c 300 %s`); if the payload is "
                  "intact, fix the header and move it back", path, why, target, target)
        return target

    def _remove_stale_temp_files(self) -> None:
        """Temp files whose writer died mid-append (kill -9, power loss): never complete, so
        never acknowledged — the collector still has those spans. A temp file whose flock is
        held belongs to a live writer (another process) and stays."""
        for name in os.listdir(self.directory):
            if not name.startswith(TMP_PREFIX):
                continue
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                path.unlink()
                log.warning("dead-letter spool: removed %s, left half-written by a writer that "
                            "stopped mid-append (its Export was never acknowledged, so the "
                            "collector still holds those spans)", path)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        _fsync_dir(self.directory)

    def _changed(self, usage: SpoolUsage) -> None:
        if self.on_change is not None:
            self.on_change(usage)


def watch_spool(spool: DeadLetterSpool, publish: Callable[[SpoolSummary], None],
                stop: threading.Event, interval_s: float = 5.0) -> threading.Thread:
    """Publish the spool's summary now and every interval_s until `stop` is set: `resend`, run
    next to `serve`, empties the spool from another process, so appends alone are not enough."""

    def loop() -> None:
        while True:
            try:
                publish(spool.summary())
            except OSError as exc:  # e.g. the directory was removed: say so, keep serving
                log.error("dead-letter spool %s cannot be read: %s", spool.directory, exc)
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=loop, name="deadletter-watch", daemon=True)
    thread.start()
    return thread
