"""audit-guard doctor: blocked audit writes, against a REAL PostgreSQL 15 (tests/support/pg.py)
with pg_stat_statements preloaded: one session holds a lock on an audit table, another's INSERT
waits on it; the doctor must find the waiting INSERT and name the blocker and its statement."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from audit_guard.doctor.findings import Finding, Level
from audit_guard.doctor.postgres import check_postgres
from tests.support.pg import PgInstance, running_postgres

SETUP = """
CREATE EXTENSION pg_stat_statements;
CREATE TABLE audit_log (id int PRIMARY KEY, what text);
CREATE TABLE orders (id int PRIMARY KEY, what text);
INSERT INTO audit_log VALUES (1, 'first');
"""


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgInstance]:
    with running_postgres(tmp_path_factory.mktemp("pg"),
                          ["shared_preload_libraries=pgaudit,pg_stat_statements"]) as instance:
        instance.psql(SETUP)
        yield instance


def blocked(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.check == "postgres.audit_write_blocked"]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def blocking(pg: PgInstance, hold: str, waiting: str) -> Iterator[int]:
    """`hold` run in an open transaction, then `waiting` in another session (a thread), which
    blocks; yields the blocker's pid. The blocker rolls back on exit and the waiter finishes."""
    holder = psycopg.connect(pg.dsn)
    errors: list[BaseException] = []
    try:
        holder.execute(hold)
        blocker_pid = holder.info.backend_pid

        def write() -> None:
            try:
                with psycopg.connect(pg.dsn, autocommit=True) as waiter:
                    waiter.execute(waiting)
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        with psycopg.connect(pg.dsn, autocommit=True) as probe:
            _wait_for(lambda: bool(probe.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND %s = "
                "ANY(pg_blocking_pids(pid))", (blocker_pid,)).fetchone()), "the write to block")
        try:
            yield blocker_pid
        finally:
            holder.rollback()
            thread.join(10)
            assert not thread.is_alive(), "the waiting write never finished"
    finally:
        holder.close()
    assert not errors, errors


def test_an_insert_waiting_on_a_table_lock_is_found_with_its_blocker(pg: PgInstance) -> None:
    assert [f.level for f in blocked(check_postgres(pg.dsn))] == [Level.OK]
    with blocking(pg, "LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE",
                  "INSERT INTO audit_log VALUES (2, 'blocked')") as blocker:
        time.sleep(1.2)  # a wait the report can put a number on
        found = check_postgres(pg.dsn)
    [finding] = blocked(found)
    assert finding.level is Level.FAIL
    assert finding.title.startswith("write to audit_log waits ")
    assert finding.title.endswith(f"on a lock held by pid {blocker}")
    waited = float(finding.title.split(" waits ")[1].split(" s ")[0])
    assert waited >= 1.0
    value = finding.evidence.value or ""
    assert "INSERT INTO audit_log VALUES (2, 'blocked')" in value
    assert f"blocker pid {blocker}" in value
    assert "LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE" in value
    assert "idle in transaction" in value  # the blocker sits in an open transaction
    assert "pg_stat_statements: writes to audit_log so far: " in value
    assert f"pg_terminate_backend({blocker})" in finding.fix
    assert "idle_in_transaction_session_timeout" in finding.fix
    [stats] = [f for f in found if f.check == "postgres.pg_stat_statements"]
    assert stats.level is Level.OK
    # the lock released, the write went through and nothing waits any more
    assert [f.level for f in blocked(check_postgres(pg.dsn))] == [Level.OK]
    assert pg.psql("SELECT what FROM audit_log WHERE id = 2").strip() == "blocked"


def test_an_insert_waiting_on_another_transactions_row(pg: PgInstance) -> None:
    """No relation lock is waited for (the INSERT waits on the other transaction's id): the
    table comes from the ROW EXCLUSIVE lock the INSERT already holds."""
    with blocking(pg, "UPDATE audit_log SET what = 'changing' WHERE id = 1",
                  "INSERT INTO audit_log VALUES (1, 'again') ON CONFLICT (id) DO UPDATE "
                  "SET what = excluded.what") as blocker:
        found = blocked(check_postgres(pg.dsn))
    [finding] = found
    assert finding.level is Level.FAIL and finding.title.endswith(f"pid {blocker}")
    assert "UPDATE audit_log SET what = 'changing' WHERE id = 1" in (finding.evidence.value or "")
    assert "transactionid lock" in (finding.evidence.value or "")


def test_a_blocked_write_to_another_table_is_not_an_audit_finding(pg: PgInstance) -> None:
    with blocking(pg, "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
                  "INSERT INTO orders VALUES (1, 'x')"):
        [finding] = blocked(check_postgres(pg.dsn))
        assert finding.level is Level.OK
        assert finding.evidence.value is not None
        assert finding.evidence.value.startswith("1 lock wait(s) now, none on a table")
        # ... unless the pattern says orders hold audit rows
        [named] = blocked(check_postgres(pg.dsn, audit_tables=r"^orders$"))
        assert named.level is Level.FAIL and named.title.startswith("write to orders waits")


def test_the_cli_flag_and_a_bad_pattern(pg: PgInstance, tmp_path: Path) -> None:
    def doctor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "audit_guard.cli", "doctor", *args],
                              capture_output=True, text=True, timeout=60)

    bad = doctor("--postgres", pg.dsn, "--audit-tables", "audit(")
    assert bad.returncode == 3 and "--audit-tables" in bad.stderr  # a usage error
    assert "not a valid regular expression" in bad.stderr
    with blocking(pg, "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
                  "INSERT INTO orders VALUES (2, 'x')") as blocker:
        out = doctor("--postgres", pg.dsn, "--audit-tables", "orders", "--json")
    assert out.returncode == 2, out.stderr
    assert f"on a lock held by pid {blocker}" in out.stdout


def test_without_pg_stat_statements_the_doctor_warns(tmp_path: Path) -> None:
    with running_postgres(tmp_path) as plain:
        plain.psql("CREATE TABLE audit_log (id int PRIMARY KEY)")
        with blocking(plain, "LOCK TABLE audit_log", "INSERT INTO audit_log VALUES (1)"):
            found = check_postgres(plain.dsn)
    [stats] = [f for f in found if f.check == "postgres.pg_stat_statements"]
    assert stats.level is Level.WARN and stats.title == "pg_stat_statements is not loaded"
    assert "shared_preload_libraries" in stats.fix
    [finding] = blocked(found)  # the live check works without it, minus the history
    assert finding.level is Level.FAIL and "pg_stat_statements:" not in (finding.evidence.value
                                                                          or "")
