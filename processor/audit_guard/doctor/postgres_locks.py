"""Blocked audit writes: sessions whose INSERT/UPDATE/COPY into an audit or log table waits on a
lock right now, who holds that lock, and for how long (the seed article's §3.2).

A blocked audit write holds the request that makes it (or, with a lock_timeout, loses the audit
row). The join: `pg_stat_activity` for the sessions waiting on a lock (`wait_event_type =
'Lock'`), `pg_blocking_pids()` for who blocks them (through `pg_locks`), `pg_locks` again for the
tables the waiting statement writes — the relation lock it waits for (a `LOCK TABLE`, an `ALTER
TABLE` holding ACCESS EXCLUSIVE), or the ROW EXCLUSIVE lock it already holds on its target while
it waits for another transaction's row (a conflicting key, an UPDATE of the same row) — and,
when installed, `pg_stat_statements` for how writes to that table fared so far.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import psycopg

from .findings import Evidence, Finding, Level

__all__ = ["DEFAULT_AUDIT_TABLES", "check_audit_write_locks"]

SUB = "postgres"
# Table names (schema-qualified as regclass prints them) that hold audit rows: pgaudit-style and
# app audit tables (audit_log, audit_events, dify's operation_logs, app_logs, …).
DEFAULT_AUDIT_TABLES = r"audit|(^|[._])(\w+_)?logs?($|_)"
_STATEMENT_CHARS = 200

BLOCKED_SQL = """
SELECT w.pid, w.query, now() - w.query_start, w.wait_event,
       b.pid, b.query, b.state, now() - b.xact_start, b.usename, b.application_name,
       ARRAY(SELECT DISTINCT l.relation::regclass::text FROM pg_locks l
             WHERE l.pid = w.pid AND l.relation IS NOT NULL
               AND (NOT l.granted OR l.mode = 'RowExclusiveLock')) AS tables
FROM pg_stat_activity w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocking(pid)
JOIN pg_stat_activity b ON b.pid = blocking.pid
WHERE w.wait_event_type = 'Lock' AND w.pid <> pg_backend_pid()
ORDER BY w.query_start, w.pid, b.pid
"""


def _short(text: str | None) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= _STATEMENT_CHARS else flat[:_STATEMENT_CHARS] + "…"


def _seconds(interval: timedelta | None) -> str:
    return "?" if interval is None else f"{interval.total_seconds():.1f} s"


def _statements(cur: psycopg.Cursor[Any], src: str) -> tuple[bool, list[Finding]]:
    """Whether pg_stat_statements can be read here, and the finding that says so."""
    cur.execute("SELECT current_setting('shared_preload_libraries', true), "
                "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')")
    preload, installed = cur.fetchone() or ("", False)
    loaded = "pg_stat_statements" in [s.strip() for s in (preload or "").split(",")]
    ev = Evidence(src, None, f"shared_preload_libraries={preload!r}, extension "
                  f"{'installed' if installed else 'not installed'}")
    if loaded and installed:
        return True, [Finding("postgres.pg_stat_statements", SUB, Level.OK,
                              "pg_stat_statements loaded", ev)]
    return False, [Finding(
        "postgres.pg_stat_statements", SUB, Level.WARN, "pg_stat_statements is not "
        + ("installed in this database" if loaded else "loaded"), ev,
        "Blocked audit writes are seen only while they wait; without pg_stat_statements "
        "there is no history of how long audit inserts took (calls, mean and max time).",
        "Add pg_stat_statements to shared_preload_libraries (restart), then "
        "CREATE EXTENSION pg_stat_statements;" if not loaded
        else "CREATE EXTENSION pg_stat_statements; (in the audited database)")]


def _history(cur: psycopg.Cursor[Any], table: str) -> str:
    """How writes to `table` fared so far. By statement text, not query id: a statement waiting
    for its table's lock waits during parse analysis, before its query id is known."""
    name = re.escape(table.rsplit(".", 1)[-1].strip('"'))
    cur.execute("SELECT sum(calls), sum(total_exec_time) / nullif(sum(calls), 0), "
                "max(max_exec_time) FROM pg_stat_statements WHERE query ~* %s",
                (rf'^\s*(insert\s+into|update|copy|delete\s+from)\s+([\w"]+\.)?"?{name}\M',))
    calls, mean, most = cur.fetchone() or (None, None, None)
    if not calls:
        return f"; pg_stat_statements: no completed write to {table} yet"
    return (f"; pg_stat_statements: writes to {table} so far: {calls} calls, mean "
            f"{mean:.1f} ms, max {most:.1f} ms")


def check_audit_write_locks(
    cur: psycopg.Cursor[Any], src: str, audit_tables: str = DEFAULT_AUDIT_TABLES
) -> list[Finding]:
    """One FAIL per audit write waiting on a lock (naming the blocker, its statement and the
    wait), an OK when none waits; and whether pg_stat_statements is there to tell history."""
    pattern = re.compile(audit_tables, re.IGNORECASE)
    with_history, found = _statements(cur, src)
    cur.execute(BLOCKED_SQL)
    rows = cur.fetchall()
    blocked = 0
    for (pid, query, waited, wait_event, bpid, bquery, bstate, bxact, buser, bapp,
         tables) in rows:
        audit = sorted(t for t in tables if pattern.search(t))
        if not audit:
            continue
        blocked += 1
        history = _history(cur, audit[0]) if with_history else ""
        value = (f"waiting pid {pid} ({wait_event} lock, {_seconds(waited)}): "
                 f"{_short(query)} | blocker pid {bpid} (user {buser}, application "
                 f"{bapp or '-'}, {bstate}, transaction open {_seconds(bxact)}): "
                 f"{_short(bquery)}{history}")
        idle = (bstate or "").startswith("idle in transaction")
        found.append(Finding(
            "postgres.audit_write_blocked", SUB, Level.FAIL,
            f"write to {', '.join(audit)} waits {_seconds(waited)} on a lock held by pid "
            f"{bpid}", Evidence(src, None, value),
            "The audit write (and the request that makes it) waits until the blocker's "
            "transaction ends; with a lock_timeout or statement_timeout the audit row is lost.",
            (f"End the blocker (SELECT pg_terminate_backend({bpid});), then find why it held "
             "the lock: " + ("it is idle in a transaction — set "
                             "idle_in_transaction_session_timeout; " if idle else "")
             + "run migrations and bulk jobs on audit tables outside peak hours, or with "
             "lock_timeout so they give way instead of the audit writes.")))
    if not blocked:
        found.append(Finding(
            "postgres.audit_write_blocked", SUB, Level.OK, "no audit write waits on a lock",
            Evidence(src, None, f"{len(rows)} lock wait(s) now, none on a table matching "
                                f"{audit_tables!r}")))
    return found
