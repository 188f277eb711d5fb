"""`audit-guard doctor`: checks a deployment for settings that lose or hide audit data.

Each check returns Findings (ok / warn / fail) with evidence, why and fix. The report is a table
for humans or JSON (`--json`); the exit code is the worst level (0 ok, 1 warn, 2 fail), 3 for a
usage error (bad arguments, unreadable input) so scripts can tell "unhealthy" from "not run".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TextIO

from .findings import Evidence, Finding, Level, exit_code

__all__ = ["Evidence", "Finding", "Level", "UsageError", "main", "render_table", "run_checks"]

USAGE_EXIT = 3


class UsageError(Exception):
    """Bad arguments or unreadable input: exit 3, never mistaken for a finding."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would exit 2 = "fail"
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="audit-guard doctor",
                description="Check nginx, Docker, the app, PostgreSQL, the collector config "
                            "and logrotate for settings that lose or hide audit data.")
    ng = p.add_mutually_exclusive_group()
    ng.add_argument("--nginx-conf", type=Path, metavar="PATH", help="nginx.conf (includes read)")
    ng.add_argument("--nginx-T", dest="nginx_dump", type=Path, metavar="FILE",
                    help="saved output of `nginx -T`")
    p.add_argument("--docker-daemon-json", type=Path, metavar="PATH")
    p.add_argument("--docker-inspect", type=Path, metavar="FILE",
                   help="saved output of `docker inspect CONTAINER...`")
    p.add_argument("--app-env", type=Path, metavar="FILE", help="the app's env file (Dify .env)")
    p.add_argument("--postgres", metavar="DSN", help="libpq DSN / URL of the audited database")
    p.add_argument("--audit-tables", metavar="REGEX", type=_regex,
                   help="with --postgres: tables holding audit rows, a case-insensitive regex "
                        "searched in schema.table (default: audit, *_log, *_logs, log_*)")
    p.add_argument("--collector-config", type=Path, metavar="PATH", nargs="+",
                   help="collector YAML file(s), merged in order")
    p.add_argument("--logrotate", type=Path, metavar="PATH", nargs="*",
                   help="logrotate config file(s)/dir(s) covering the audit logs, read in "
                        "order (no PATH: /etc/logrotate.conf, which includes /etc/logrotate.d)")
    p.add_argument("--audit-log", type=str, metavar="PATH", action="append",
                   help="an audit log (path or glob) --logrotate must rotate safely; repeat it "
                        "(default: the files --collector-config reads, else the shipped "
                        "config's defaults)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a valid regular expression: {exc}") from exc
    return text


def run_checks(args: argparse.Namespace) -> list[Finding]:
    # Imported here: each subsystem pulls its own dependency (crossplane, psycopg) only when used.
    jobs: list[Callable[[], list[Finding]]] = []
    if args.nginx_conf or args.nginx_dump:
        from .nginx import check_nginx
        jobs.append(lambda: check_nginx(args.nginx_conf, args.nginx_dump))
    if args.docker_daemon_json:
        from .docker import check_daemon_json
        jobs.append(lambda: check_daemon_json(args.docker_daemon_json))
    if args.docker_inspect:
        from .docker import check_inspect
        # --app-env wins for the app settings; otherwise they are read from the inspect Env.
        jobs.append(lambda: check_inspect(args.docker_inspect, with_app=not args.app_env))
    if args.app_env:
        from .app import check_app_env, parse_env_file
        jobs.append(lambda: check_app_env(parse_env_file(args.app_env), str(args.app_env)))
    if args.collector_config:
        from .collector import check_collector
        jobs.append(lambda: check_collector(args.collector_config))
    if args.logrotate is not None:
        jobs.append(lambda: _logrotate_job(args))
    if args.postgres:
        check_postgres = _postgres_check()
        jobs.append(lambda: check_postgres(args.postgres, *filter(None, [args.audit_tables])))
    if not jobs:
        raise UsageError("nothing to check: give at least one of the input options (see --help)")
    findings: list[Finding] = []
    for job in jobs:
        try:
            findings.extend(job())
        except (OSError, ValueError) as exc:  # missing file, bad JSON/YAML/nginx syntax
            raise UsageError(str(exc)) from exc
    return findings


def _postgres_check() -> Callable[[str], list[Finding]]:
    """doctor's live PostgreSQL checks; psycopg comes with the [postgres] extra, and its absence
    is a usage error in one line, not a traceback."""
    try:
        from .postgres import check_postgres
    except ImportError as exc:  # psycopg missing, or installed without a libpq it can load
        if not (exc.name or "psycopg").startswith("psycopg"):
            raise
        raise UsageError("--postgres needs the [postgres] extra (psycopg cannot be imported): "
                         "pip install 'audit-guard[postgres]'") from exc
    return check_postgres


def _logrotate_job(args: argparse.Namespace) -> list[Finding]:
    from .logrotate import AuditLog, audit_logs_from_collector, check_logrotate

    if args.audit_log:
        logs = [AuditLog(p, "nginx" if "nginx" in p else "other") for p in args.audit_log]
    elif args.collector_config:
        from .collector import load_merged
        logs = audit_logs_from_collector(load_merged(args.collector_config)[0])
    else:
        logs = None
    return check_logrotate(args.logrotate or None, logs)


def render_table(findings: list[Finding], out: TextIO) -> None:
    rows = [(str(f.level).upper(), f.check, f.evidence.where(), f.title) for f in findings]
    widths = [max(len(r[i]) for r in [("LEVEL", "CHECK", "WHERE", ""), *rows]) for i in range(3)]
    out.write(f"{'LEVEL':<{widths[0]}}  {'CHECK':<{widths[1]}}  {'WHERE':<{widths[2]}}  WHAT\n")
    for r in rows:
        out.write(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}\n")
    problems = [f for f in findings if f.level is not Level.OK]
    for f in sorted(problems, key=lambda f: -f.level):
        out.write(f"\n[{str(f.level).upper()}] {f.title}\n  where: {f.evidence.where()}\n")
        if f.evidence.value:
            out.write(f"  value: {f.evidence.value}\n")
        out.write(f"  why:   {f.why}\n  fix:   {f.fix}\n")
    counts = {lvl: sum(f.level is lvl for f in findings) for lvl in Level}
    out.write(f"\n{counts[Level.FAIL]} fail, {counts[Level.WARN]} warn, {counts[Level.OK]} ok\n")


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
        findings = run_checks(args)
    except UsageError as exc:
        print(f"audit-guard doctor: {exc}", file=sys.stderr)
        return USAGE_EXIT
    if args.json:
        json.dump({"exit_code": exit_code(findings),
                   "findings": [f.to_json() for f in findings]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_table(findings, sys.stdout)
    return exit_code(findings)
