"""PostgreSQL checks, against a live server through psycopg 3.

pgaudit must be loaded and configured to log what an audit needs; the server log must reach a
file reliably; time-partitioned audit/app tables must have a partition for now and what comes
next (or inserts fail, or rows vanish into a DEFAULT partition); WAL archiving must work;
no audit write may be waiting on a lock (doctor/postgres_locks.py).
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timedelta
from typing import Any

import psycopg

from .findings import Evidence, Finding, Level
from .postgres_locks import DEFAULT_AUDIT_TABLES, check_audit_write_locks
from .secrets import redact_dsn, redact_text

__all__ = ["check_postgres"]

SUB = "postgres"
NEEDED_CLASSES = ("write", "ddl", "role")
TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")

PARTITIONS_SQL = """
SELECT p.oid::regclass::text, c.oid::regclass::text, pg_get_expr(c.relpartbound, c.oid),
       pt.partstrat, pt.partnatts,
       format_type(a.atttypid, a.atttypmod)
FROM pg_partitioned_table pt
JOIN pg_class p ON p.oid = pt.partrelid
LEFT JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = pt.partattrs[0]
LEFT JOIN pg_inherits i ON i.inhparent = p.oid
LEFT JOIN pg_class c ON c.oid = i.inhrelid
ORDER BY 1, 2
"""


def _setting(cur: psycopg.Cursor[Any], name: str) -> str | None:
    cur.execute("SELECT current_setting(%s, true)", (name,))
    row = cur.fetchone()
    return None if row is None else row[0]


def _pgaudit(cur: psycopg.Cursor[Any], src: str) -> list[Finding]:
    found: list[Finding] = []
    preload = _setting(cur, "shared_preload_libraries") or ""
    loaded = "pgaudit" in [s.strip() for s in preload.split(",")]
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'pgaudit'")
    ext = cur.fetchone()
    if not loaded:
        return [Finding(
            "postgres.pgaudit_loaded", SUB, Level.FAIL, "pgaudit is not preloaded",
            Evidence(src, None, f"shared_preload_libraries={preload!r}"),
            "Without it the database writes no audit lines at all.",
            "Add pgaudit to shared_preload_libraries, restart, CREATE EXTENSION pgaudit.")]
    if ext is None:
        found.append(Finding(
            "postgres.pgaudit_loaded", SUB, Level.WARN, "pgaudit preloaded but no extension",
            Evidence(src, None, "pg_extension has no pgaudit"),
            "Without CREATE EXTENSION pgaudit its event triggers are missing: DDL is logged "
            "without the objects it touched.", "Run CREATE EXTENSION pgaudit; (as superuser)."))
    else:
        found.append(Finding("postgres.pgaudit_loaded", SUB, Level.OK,
                             f"pgaudit {ext[0]} loaded", Evidence(src, None, preload)))
    classes = [c.strip().lower() for c in (_setting(cur, "pgaudit.log") or "none").split(",")]
    enabled = set(classes) - {"none"}
    if "all" in enabled:
        enabled |= {"read", "write", "function", "role", "ddl", "misc", "misc_set"}
    enabled -= {c[1:] for c in classes if c.startswith("-")}
    lacking = [c for c in NEEDED_CLASSES if c not in enabled]
    ev = Evidence(src, None, f"pgaudit.log={','.join(classes)}")
    if lacking:
        found.append(Finding(
            "postgres.pgaudit_log", SUB, Level.FAIL if not enabled else Level.WARN,
            f"pgaudit.log lacks {', '.join(lacking)}", ev,
            "Changes to data (write), schema (ddl) and privileges (role) are the statements an "
            "audit is asked about; those classes are not logged.",
            "ALTER SYSTEM SET pgaudit.log = 'write, ddl, role'; SELECT pg_reload_conf();"))
    else:
        found.append(Finding("postgres.pgaudit_log", SUB, Level.OK, "pgaudit.log covers "
                             "write, ddl, role", ev))
    for name, why in (("pgaudit.log_parameter", "bind parameters are logged as <not logged>: "
                       "the line says a row was updated but not with what"),
                      ("pgaudit.log_relation", "a statement touching several tables is logged "
                       "once, not once per table: per-table queries miss it")):
        value = _setting(cur, name) or "off"
        if value != "on":
            found.append(Finding(f"postgres.{name.split('.')[1]}", SUB, Level.WARN,
                                 f"{name} is {value}", Evidence(src, None, f"{name}={value}"),
                                 f"With it off, {why}.", f"ALTER SYSTEM SET {name} = on;"))
    return found


def _logging(cur: psycopg.Cursor[Any], src: str, local: bool) -> list[Finding]:
    collector = _setting(cur, "logging_collector")
    dest = _setting(cur, "log_destination") or "stderr"
    ev = Evidence(src, None, f"logging_collector={collector} log_destination={dest}")
    found: list[Finding] = []
    if collector != "on":
        found.append(Finding(
            "postgres.logging_collector", SUB,
            Level.FAIL if re.search(r"csvlog|jsonlog", dest) else Level.WARN,
            "logging_collector is off", ev,
            "stderr goes wherever the service manager puts it: concurrent backends can "
            "interleave long lines, and csvlog/jsonlog are not written at all.",
            "Set logging_collector = on (restart) and log to files the collector reads."))
    else:
        found.append(Finding("postgres.logging_collector", SUB, Level.OK,
                             "server log written by the logging collector", ev))
        log_dir = _setting(cur, "log_directory") or "log"
        data_dir = _setting(cur, "data_directory")
        path = log_dir if os.path.isabs(log_dir) or not data_dir else \
            os.path.join(data_dir, log_dir)
        if local and os.path.isdir(path):
            usage = shutil.disk_usage(path)
            free = usage.free / usage.total
            level = Level.FAIL if free < 0.02 else Level.WARN if free < 0.10 else Level.OK
            found.append(Finding(
                "postgres.log_disk", SUB, level, f"log directory {free:.0%} free",
                Evidence(path, None, f"{usage.free // 1024**2} MiB free of "
                         f"{usage.total // 1024**2} MiB"),
                "" if level is Level.OK else "A full log disk stops the server writing log "
                "lines (and audit lines) while it keeps serving queries.",
                "" if level is Level.OK else "Free space or move log_directory; check rotation."))
    return found


def _archiver(cur: psycopg.Cursor[Any], src: str) -> list[Finding]:
    if _setting(cur, "archive_mode") == "off":
        return []
    cur.execute("SELECT failed_count, last_failed_time, last_archived_time, now() "
                "FROM pg_stat_archiver")
    failed, last_failed, last_ok, now = cur.fetchone() or (0, None, None, None)
    ev = Evidence(src, None, f"failed_count={failed} last_failed={last_failed} "
                  f"last_archived={last_ok}")
    if failed and (last_ok is None or (last_failed and last_failed > last_ok)):
        return [Finding("postgres.archiver", SUB, Level.FAIL, "WAL archiving is failing", ev,
                        "WAL piles up in pg_wal until the disk fills; the history needed to "
                        "prove what changed is not being archived.",
                        "Read the archive_command errors in the server log and fix them.")]
    if failed:
        lag = f" (last success {now - last_ok} ago)" if last_ok else ""
        return [Finding("postgres.archiver", SUB, Level.WARN,
                        f"WAL archiving failed {failed} times{lag}", ev,
                        "Failures happened; archive gaps must be ruled out.",
                        "Check the server log for archive_command errors.")]
    return [Finding("postgres.archiver", SUB, Level.OK, "WAL archiving without failures", ev)]


def _bounds(cur: psycopg.Cursor[Any], expr: str) -> tuple[datetime | None, datetime | None]:
    """(from, to) of a single-column range bound; None stands for MINVALUE/MAXVALUE."""
    m = _BOUND.fullmatch(expr)
    if not m:
        raise ValueError(expr)
    out: list[datetime | None] = []
    for lit in m.groups():
        if lit in ("MINVALUE", "MAXVALUE"):
            out.append(None)
        else:  # let the server read its own literal, in the session time zone like now()
            cur.execute(f"SELECT {lit}::timestamptz")  # noqa: S608 - server-produced literal
            out.append(cur.fetchone()[0])  # type: ignore[index]
    return out[0], out[1]


def _covered_until(ranges: list[tuple[datetime | None, datetime | None]],
                   now: datetime) -> datetime | None:
    """End of the gap-free run of partitions that starts at `now` (None: up to MAXVALUE)."""
    t = now
    for _ in range(len(ranges) + 1):
        nxt = [r for r in ranges if (r[0] is None or r[0] <= t) and (r[1] is None or t < r[1])]
        if not nxt:
            return t
        if nxt[0][1] is None:
            return None
        t = nxt[0][1]
    return t


def _partitions(cur: psycopg.Cursor[Any], src: str, now: datetime) -> list[Finding]:
    cur.execute(PARTITIONS_SQL)
    tables: dict[str, dict[str, Any]] = {}
    for parent, child, bound, strat, natts, keytype in cur.fetchall():
        t = tables.setdefault(parent, {"strat": strat, "natts": natts, "type": keytype,
                                       "parts": []})
        if child is not None:
            t["parts"].append((child, bound))
    found: list[Finding] = []
    for parent, t in tables.items():
        default = next((c for c, b in t["parts"] if b == "DEFAULT"), None)
        if default is not None:
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {default})")  # noqa: S608 - regclass
            if cur.fetchone()[0]:  # type: ignore[index]
                found.append(Finding(
                    "postgres.default_partition_rows", SUB, Level.FAIL,
                    f"{parent}: rows sit in the DEFAULT partition {default}",
                    Evidence(src, None, default),
                    "Rows had no proper partition and landed here silently; creating the "
                    "partition for their range now fails until they are moved.",
                    f"Create the missing partitions as standalone tables, move the rows out of "
                    f"{default} into them (in one transaction) and ATTACH them."))
        if t["strat"] != "r" or t["natts"] != 1 or t["type"] not in TIME_TYPES:
            continue
        ranges = [_bounds(cur, b) for _, b in t["parts"] if b != "DEFAULT"]
        widths = sorted(r[1] - r[0] for r in ranges if r[0] and r[1])
        period = widths[len(widths) // 2] if widths else timedelta(days=1)
        ahead = _covered_until(ranges, now)
        ev = Evidence(src, None, f"{parent}: {len(ranges)} partitions, key {t['type']}")
        if ahead == now:  # the covered run ends where it starts: no partition holds now
            found.append(Finding(
                "postgres.partition_now", SUB, Level.FAIL, f"{parent}: no partition covers now",
                ev, "Inserts fail with `no partition of relation ... found for row` (or, with a "
                "DEFAULT partition, pile up there): audit rows are being lost now.",
                f"Create the partition for {now:%Y-%m-%d} at once; then automate it "
                "(pg_partman or a cron job) several periods ahead."))
        elif ahead is not None and ahead <= now + period:
            found.append(Finding(
                "postgres.partition_next", SUB, Level.WARN,
                f"{parent}: partitions end at {ahead:%Y-%m-%d %H:%M}, within one period", ev,
                "When the current partition ends, inserts start failing.",
                "Create the next partitions now and automate it."))
        else:
            until = "MAXVALUE" if ahead is None else f"{ahead:%Y-%m-%d}"
            found.append(Finding("postgres.partition_now", SUB, Level.OK,
                                 f"{parent}: partitions up to {until}", ev))
    return found


def _partman(cur: psycopg.Cursor[Any], src: str, now: datetime) -> list[Finding]:
    """pg_partman keeps `premake` partitions ahead of now — if its maintenance runs."""
    cur.execute("SELECT extnamespace::regnamespace::text FROM pg_extension "
                "WHERE extname = 'pg_partman'")
    row = cur.fetchone()
    if row is None:
        return []
    schema = row[0]
    found: list[Finding] = []
    for parent, premake in cur.execute(
            f"SELECT parent_table, premake FROM {schema}.part_config").fetchall():  # noqa: S608
        cur.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            (parent,))
        bounds = [b for (b,) in cur.fetchall() if b and b != "DEFAULT"]
        try:
            starts = [_bounds(cur, b)[0] for b in bounds]
        except ValueError:
            continue  # not a single-column range: the partition checks above speak for it
        ahead = sum(1 for start in starts if start is not None and start > now)
        ev = Evidence(src, None, f"{schema}.part_config: {parent} premake={premake}, "
                                 f"{ahead} partition(s) ahead of now")
        if ahead < premake:
            found.append(Finding(
                "postgres.partman_premake", SUB, Level.WARN,
                f"{parent}: pg_partman should keep {premake} partitions ahead, {ahead} exist",
                ev, "pg_partman creates future partitions only when its maintenance runs; "
                "when it stops, the last partition runs out and audit rows fail or pile up in "
                "DEFAULT.",
                f"Run `SELECT {schema}.run_maintenance();` now, and schedule it (pg_partman_bgw "
                "in shared_preload_libraries, or cron)."))
        else:
            found.append(Finding("postgres.partman_premake", SUB, Level.OK,
                                 f"{parent}: pg_partman keeps {ahead} partitions ahead", ev))
    return found


def check_postgres(dsn: str, audit_tables: str = DEFAULT_AUDIT_TABLES) -> list[Finding]:
    """A connection failure is itself a finding: the database could not be verified.
    `audit_tables`: a regex (case-insensitive, searched) for the tables holding audit rows."""
    src = redact_dsn(dsn)  # never print a secret
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, autocommit=True)
    except psycopg.Error as exc:
        return [Finding("postgres.connect", SUB, Level.FAIL, "cannot connect to PostgreSQL",
                        Evidence(src, None, redact_text(str(exc).strip(), dsn)[:300]),
                        "None of the database checks could run.",
                        "Check the DSN, network access and credentials.")]
    with conn, conn.cursor() as cur:
        host = conn.info.host
        local = host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")
        cur.execute("SELECT now()")  # one instant for both partition checks
        now = cur.fetchone()[0]  # type: ignore[index]
        return [*_pgaudit(cur, src), *_logging(cur, src, local), *_archiver(cur, src),
                *_partitions(cur, src, now), *_partman(cur, src, now),
                *check_audit_write_locks(cur, src, audit_tables)]
