"""The durable state of the stateful stages: one SQLite file in `reconcile.state_dir`.

- `snapshot` + `journal`: the request reconciler's entries, folded every checkpoint, and the
  changes appended since (audit_guard.correlate.reconcile);
- `blobs`: small named states written whole (the error-log events waiting for their access
  record, audit_guard.correlate.errorlog).

Durability matches the collector's `file_storage` with `fsync: true`: WAL with
`synchronous=FULL`, so every append is on disk before the Export it belongs to is acknowledged.
A write that fails (disk full, I/O error) raises `StateWriteError`, a retryable failure: the
receiver answers UNAVAILABLE and the collector resends later; nothing was changed in memory.

A state file that cannot be read (not a database, a damaged page, an entry that does not
decode) is moved aside with a loud error and the service starts afresh rather than refusing to
start at every restart: `corrupt_moved_to` says where it went (counted by the caller).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path

from ..handoff import Retryable

__all__ = ["StateStore", "StateWriteError"]

log = logging.getLogger(__name__)


class StateWriteError(Retryable):
    """The state could not be written (disk full, I/O error): retry later, nothing changed."""


class StateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.corrupt_moved_to: Path | None = None
        try:
            self._open()
            self._db.execute("SELECT count(*) FROM journal").fetchone()
            self._db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            self.set_aside(f"cannot be opened: {exc}")
        self.appended_bytes = 0  # since the last checkpoint

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, as the collector's file_storage fsyncs.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY, "
                         "taken_unix_nano INTEGER NOT NULL, entries BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, "
                         "entry BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS blobs (name TEXT PRIMARY KEY, "
                         "value BLOB NOT NULL)")

    def set_aside(self, why: str) -> None:
        """Move the unreadable state file (and its WAL) aside and start with an empty one."""
        with contextlib.suppress(AttributeError, sqlite3.Error):
            self._db.close()
        target = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(target) + suffix))
        self.corrupt_moved_to = target
        log.error("reconcile state %s %s: moved aside to %s and starting with an empty state. "
                  "Requests that were waiting for their app record are forgotten (they cannot "
                  "be reported missing); keep the file for a post-mortem.", self.path, why,
                  target)
        self._open()

    # -- reconciler entries ------------------------------------------------------------------
    def load(self) -> tuple[bytes | None, list[bytes]]:
        row = self._db.execute("SELECT entries FROM snapshot WHERE id = 1").fetchone()
        journal = [e for (e,) in self._db.execute("SELECT entry FROM journal ORDER BY seq")]
        return (row[0] if row else None), journal

    def append(self, entry: bytes) -> None:
        try:
            self._db.execute("INSERT INTO journal (entry) VALUES (?)", (entry,))
        except sqlite3.Error as exc:
            raise StateWriteError(f"cannot write the reconcile journal {self.path}: {exc}") \
                from None
        self.appended_bytes += len(entry)

    def checkpoint(self, snapshot: bytes, now_ns: int) -> None:
        """Replace the journal by a snapshot. A failure leaves the journal as it was (one
        transaction) and is retried at the next checkpoint."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?)",
                                 (now_ns, snapshot))
                self._db.execute("DELETE FROM journal")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StateWriteError(f"cannot checkpoint {self.path}: {exc}") from None
        self.appended_bytes = 0

    def journal_rows(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM journal").fetchone()[0])

    # -- named blobs -------------------------------------------------------------------------
    def get(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM blobs WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, name: str, value: bytes) -> None:
        try:
            self._db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (name, value))
        except sqlite3.Error as exc:
            raise StateWriteError(f"cannot write {name} to {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()
