"""audit-guard doctor: PostgreSQL checks against a REAL PostgreSQL 15 with pgaudit
(tests/support/pg.py).

Three time-partitioned tables: one with rows in its DEFAULT partition, one without a partition
for the current month, one healthy (this month and the next three). The doctor must flag the
first two and pass the third.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_guard.doctor import main
from audit_guard.doctor.findings import Finding, Level
from audit_guard.doctor.postgres import check_postgres
from tests.support.pg import PgInstance, running_postgres

SETUP = """
CREATE TABLE audit_in_default (at timestamptz NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE audit_in_default_old PARTITION OF audit_in_default
    FOR VALUES FROM ('2000-01-01') TO ('2000-02-01');
CREATE TABLE audit_in_default_def PARTITION OF audit_in_default DEFAULT;
INSERT INTO audit_in_default VALUES (now(), 'landed in default');

CREATE TABLE audit_stale (at timestamptz NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE audit_stale_old PARTITION OF audit_stale
    FOR VALUES FROM ('2000-01-01') TO ('2000-02-01');

CREATE TABLE audit_ok (at date NOT NULL, what text) PARTITION BY RANGE (at);
DO $$
DECLARE m date := date_trunc('month', now())::date;
BEGIN
  FOR i IN 0..3 LOOP
    EXECUTE format('CREATE TABLE audit_ok_%s PARTITION OF audit_ok FOR VALUES FROM (%L) TO (%L)',
                   i, m + make_interval(months => i), m + make_interval(months => i + 1));
  END LOOP;
END $$;
INSERT INTO audit_ok VALUES (now(), 'fine');
"""


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgInstance]:
    with running_postgres(tmp_path_factory.mktemp("pg")) as instance:
        instance.psql(SETUP)
        yield instance


def by_check(found: list[Finding], check: str) -> list[Finding]:
    return [f for f in found if f.check == check]


def test_partition_checks(pg: PgInstance) -> None:
    found = check_postgres(pg.dsn)
    default = by_check(found, "postgres.default_partition_rows")
    assert [(f.level, f.evidence.value) for f in default] == [
        (Level.FAIL, "audit_in_default_def")]
    now = {f.title.split(":")[0]: f.level for f in by_check(found, "postgres.partition_now")}
    assert now["audit_stale"] is Level.FAIL
    assert now["audit_in_default"] is Level.FAIL  # only the DEFAULT takes today's rows
    assert now["audit_ok"] is Level.OK
    assert not [f for f in found if "audit_ok" in f.title and f.level is not Level.OK]


def test_next_period_missing_is_a_warning(pg: PgInstance) -> None:
    pg.psql("""
CREATE TABLE audit_short (at timestamptz NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE audit_short_now PARTITION OF audit_short
    FOR VALUES FROM (now() - interval '1 day') TO (now() + interval '1 hour');
""")
    try:
        found = check_postgres(pg.dsn)
        short = [f for f in found if f.title.startswith("audit_short")]
        assert [(f.check, f.level) for f in short] == [("postgres.partition_next", Level.WARN)]
    finally:
        pg.psql("DROP TABLE audit_short;")


def test_pgaudit_and_logging_checks(pg: PgInstance) -> None:
    found = check_postgres(pg.dsn)
    # tests/support/pg.py runs pgaudit.log=all, log_parameter/log_relation on, logging_collector on.
    for check in ("postgres.pgaudit_loaded", "postgres.pgaudit_log",
                  "postgres.logging_collector", "postgres.log_disk"):
        assert [f.level for f in by_check(found, check)] == [Level.OK], check
    assert not by_check(found, "postgres.log_parameter")
    assert by_check(found, "postgres.log_disk")[0].evidence.file == str(pg.log_dir)


def test_weak_pgaudit_settings_are_found(pg: PgInstance) -> None:
    # Per-database settings apply to new sessions: the doctor's connection sees them.
    pg.psql("CREATE DATABASE weak; ALTER DATABASE weak SET pgaudit.log = 'read, misc';"
            "ALTER DATABASE weak SET pgaudit.log_parameter = off;"
            "ALTER DATABASE weak SET pgaudit.log_relation = off;")
    found = check_postgres(pg.dsn.rsplit("/", 1)[0] + "/weak")
    assert [f.level for f in by_check(found, "postgres.pgaudit_log")] == [Level.WARN]
    assert "write, ddl, role" in by_check(found, "postgres.pgaudit_log")[0].title
    assert [f.level for f in by_check(found, "postgres.log_parameter")] == [Level.WARN]
    assert [f.level for f in by_check(found, "postgres.log_relation")] == [Level.WARN]
    # No CREATE EXTENSION in that database.
    assert [f.level for f in by_check(found, "postgres.pgaudit_loaded")] == [Level.WARN]


def test_cli_against_postgres(pg: PgInstance, tmp_path: Path) -> None:
    assert main(["--postgres", pg.dsn, "--json"]) == 2  # the two broken tables
    dead = f"postgresql://postgres@127.0.0.1:{pg.port + 1}/postgres"
    assert main(["--postgres", dead]) == 2  # cannot connect: a fail finding, not a crash


def test_failing_wal_archiving_is_found(tmp_path: Path) -> None:
    """archive_command fails (`false`): pg_stat_archiver.failed_count grows → fail finding."""
    settings = ["wal_level=replica", "archive_mode=on", "archive_command=false",
                "archive_timeout=0"]
    with running_postgres(tmp_path, settings) as pg:
        pg.psql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000);"
                "SELECT pg_switch_wal();")
        deadline = time.monotonic() + 30
        found: list[Finding] = []
        while time.monotonic() < deadline:
            found = by_check(check_postgres(pg.dsn), "postgres.archiver")
            if found and found[0].level is Level.FAIL:
                break
            time.sleep(0.5)
        (archiver,) = found
        assert archiver.level is Level.FAIL and "archiv" in archiver.title.lower()


def test_healthy_archiving_is_ok(pg: PgInstance) -> None:
    # archive_mode is off on the shared instance: nothing to report, no false alarm
    assert by_check(check_postgres(pg.dsn), "postgres.archiver") == []


def test_pg_partman_maintenance_gap_is_found(tmp_path: Path) -> None:
    with running_postgres(tmp_path) as pg:
        pg.psql("""
            CREATE SCHEMA partman;
            CREATE EXTENSION pg_partman SCHEMA partman;
            CREATE TABLE events (at timestamptz NOT NULL, what text) PARTITION BY RANGE (at);
            SELECT partman.create_parent(p_parent_table => 'public.events', p_control => 'at',
                                         p_type => 'native', p_interval => 'daily',
                                         p_premake => 4);
        """)
        (ok,) = by_check(check_postgres(pg.dsn), "postgres.partman_premake")
        assert ok.level is Level.OK and "4 partitions ahead" in ok.title
        # maintenance stopped: the furthest future partitions were never made (drop two)
        pg.psql("""
            DO $$
            DECLARE r record;
            BEGIN
              FOR r IN SELECT c.oid::regclass AS part FROM pg_inherits i
                       JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = 'public.events'::regclass
                         AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
                       ORDER BY c.relname DESC LIMIT 2 LOOP
                EXECUTE format('DROP TABLE %s', r.part);
              END LOOP;
            END $$;
        """)
        (gap,) = by_check(check_postgres(pg.dsn), "postgres.partman_premake")
        assert gap.level is Level.WARN and "4 partitions ahead, 2 exist" in gap.title
        assert "run_maintenance" in gap.fix


def test_stderr_without_logging_collector_is_found(tmp_path: Path) -> None:
    with running_postgres(tmp_path, ["logging_collector=off", "log_destination=stderr"]) as pg:
        (finding,) = by_check(check_postgres(pg.dsn), "postgres.logging_collector")
        assert finding.level is not Level.OK and "logging_collector is off" in finding.title


def test_nearly_full_log_disk_is_found(tmp_path: Path) -> None:
    """The server's log_directory on a small tmpfs that is 94 % full → warn."""
    # outside pytest's tmp dirs: those are 0700 root, and the postgres user must reach it
    mount = Path(tempfile.mkdtemp(prefix="ag-pglog-"))
    mount.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mount)], check=True)
    try:
        shutil.chown(mount, "postgres", "postgres")
        filler = mount / "filler"
        with filler.open("wb") as fh:
            fh.write(b"\0" * (8 * 1024 * 1024 * 94 // 100))
        with running_postgres(tmp_path / "pg", [f"log_directory={mount}"]) as pg:
            (disk,) = by_check(check_postgres(pg.dsn), "postgres.log_disk")
            assert disk.level is Level.WARN and "free" in disk.title
            assert "full log disk" in disk.why
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)
