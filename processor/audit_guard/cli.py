"""`audit-guard` command line: serve | replay | resend | doctor (the demo is `make demo`).

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .integrity.command import add_verify

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["main"]

DISTRIBUTION = "audit-guard"
# `name[extras] >=1.0; extra == "serve"` in the installed metadata's Requires-Dist.
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)[^;]*;.*\bextra\s*==\s*[\"']([^\"']+)")


class MissingExtra(Exception):
    """A command needs an optional extra (pyproject.toml) that is not installed: one line for
    the operator, exit 2, never a traceback."""

    def __init__(self, extra: str, missing: list[str]) -> None:
        named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if missing[3:] else "")
        super().__init__(f"needs the [{extra}] extra ({named} not installed): "
                         f"pip install '{DISTRIBUTION}[{extra}]'")


def _missing_distributions(extra: str) -> list[str]:
    """The packages `extra` declares that are not installed; [] when audit-guard runs from a
    source tree without installed metadata (then a failed import says it, see _needs_extra)."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requires:
        match = _REQUIREMENT.match(requirement)
        if match is None or match[2] != extra:
            continue
        try:
            metadata.distribution(match[1])
        except metadata.PackageNotFoundError:
            missing.append(match[1])
    return missing


@contextmanager
def _needs_extra(extra: str, *, check_first: bool = True) -> Iterator[None]:
    """Runs a block that imports what `extra` installs; checks first (unless the block needs it
    only sometimes) that its packages are installed, and turns a third-party module that still
    cannot be imported into MissingExtra."""
    missing = _missing_distributions(extra) if check_first else []
    if missing:
        raise MissingExtra(extra, missing)
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if not top or top == __package__:  # our own module missing: a bug, not an extra
            raise
        raise MissingExtra(extra, [top]) from exc


def _settings(args: argparse.Namespace, prog: str) -> Settings | None:
    """The settings of --config (else $AUDIT_GUARD_CONFIG, else defaults and env); None, with
    the bad keys said on stderr, when they do not validate."""
    from .config import ConfigError, load_settings

    config_file = args.config or (
        Path(os.environ["AUDIT_GUARD_CONFIG"]) if os.environ.get("AUDIT_GUARD_CONFIG") else None
    )
    try:
        return load_settings(config_file)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    with _needs_extra("serve"):  # checked before the config is read: the first thing to fix
        from .serve import StartupError, build_service

    settings = _settings(args, "audit-guard")
    if settings is None:
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        with _needs_extra("serve"):  # build_service imports gRPC, FastAPI, the SDK…
            service = build_service(settings)
            service.start()
    except StartupError as exc:
        print(f"audit-guard: {exc}", file=sys.stderr)
        return 2

    def _on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("audit_guard").info(
            "%s: finishing in-flight batches, then exiting", signal.Signals(signum).name
        )
        service.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    reload_rules = service.reload_rules
    if reload_rules is not None:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload_rules).start())
    service.wait()
    return 0


def _replay(args: argparse.Namespace) -> int:
    from .config import ConfigError, ExporterConfig, load_settings
    from .handoff import DownstreamUnavailable
    from .replay import ReplayError, parse_source_options, replay

    try:
        # A config with exporter.permanent_codes is checked against gRPC's code names.
        with _needs_extra("serve", check_first=False):
            settings = load_settings(args.config)
        exporter = None
        if args.export:
            with _needs_extra("serve"):  # gRPC; replay alone runs on the base install
                from .otlp.exporter import SpanExporter
            exporter = SpanExporter(ExporterConfig(endpoint=args.export))
    except (ConfigError, ValueError) as exc:
        print(f"audit-guard replay: {exc}", file=sys.stderr)
        return 2
    try:
        source, file_sources = parse_source_options(args.source)
        return replay(args.files, source=source, file_sources=file_sources, settings=settings,
                      window_s=args.window, out=sys.stdout.buffer, err=sys.stderr,
                      exporter=exporter)
    except ReplayError as exc:
        print(f"audit-guard replay: {exc}", file=sys.stderr)
        return 2
    except DownstreamUnavailable as exc:
        print(f"audit-guard replay: --export {args.export}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error
        sys.stderr.close()
        return 0
    finally:
        if exporter is not None:
            exporter.shutdown()


def _resend(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .config import ExporterConfig

    with _needs_extra("serve"):  # the span exporter speaks OTLP/gRPC
        from .otlp.exporter import SpanExporter
        from .otlp.resend import resend
        from .otlp.spool import DeadLetterSpool

    settings = _settings(args, "audit-guard resend")
    if settings is None:
        return 2
    directory = settings.deadletter_dir()
    if directory is None:
        print("audit-guard resend: no dead-letter spool is configured (set deadletter.dir, or "
              "reconcile.state_dir for <state_dir>/deadletter, as `serve` has it)",
              file=sys.stderr)
        return 2
    config = settings.exporter
    if args.endpoint:
        try:
            config = ExporterConfig.model_validate(
                {**config.model_dump(), "endpoint": args.endpoint})
        except ValidationError:
            print(f"audit-guard resend: --endpoint {args.endpoint!r} must be host:port, e.g. "
                  f"127.0.0.1:4417", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        spool = DeadLetterSpool(directory, settings.deadletter.max_bytes)
    except OSError as exc:
        print(f"audit-guard resend: cannot open the dead-letter spool {directory}: {exc}",
              file=sys.stderr)
        return 2
    # No spool for this exporter: what downstream refuses again must stay in place, not be
    # copied into the spool a second time.
    exporter = None if args.dry_run else SpanExporter(config)
    try:
        return resend(spool, exporter, endpoint=config.endpoint, out=sys.stdout,
                      dry_run=args.dry_run)
    finally:
        if exporter is not None:
            exporter.shutdown()


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["doctor"]:  # doctor parses its own options (see `doctor --help`)
        from .doctor import main as doctor_main

        return doctor_main(args_in[1:])
    args = _parser().parse_args(args_in)
    try:
        return int(args.func(args))
    except MissingExtra as exc:
        print(f"audit-guard {args.command}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit-guard",
        description="Keeps audit logs honest: flags truncated, invalid and missing audit records.",
    )
    parser.add_argument("--version", action="version", version=f"audit-guard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_replay(sub)
    _add_resend(sub)
    _add_doctor(sub)
    add_verify(sub)
    return parser


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the OTLP/gRPC processor service")
    serve.add_argument(
        "--config", type=Path, help="YAML config file (default: $AUDIT_GUARD_CONFIG, if set)"
    )
    serve.set_defaults(func=_serve)


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay",
        help="run the pipeline over log files; JSON Lines to stdout, a summary to stderr",
        description="Exit 0: nothing flagged; 1: something flagged; 2: usage or input error.",
    )
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="log files (.gz is read too)")
    replay.add_argument(
        "--source", action="append", default=[], metavar="FORMAT[=FILE]",
        help="read every file as FORMAT, or (FORMAT=FILE, repeatable) just that file; FORMAT: "
             "nginx, nginx_error, app, pgaudit, docker, cri, journald (journalctl -o json "
             "--all; docker/cri/journald: the wrapped lines' "
             "format is still detected; nginx or app for a container log applies to the lines "
             "inside it). Default: detected per file from its first lines, on keys only one "
             "format writes; the summary says which format and why",
    )
    replay.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="how far apart an Nginx request and its app audit record (or its "
                             "error-log event) may be; default: the config's reconcile.window_s "
                             "and error_join_window_s (30)")
    replay.add_argument("--export", metavar="HOST:PORT",
                        help="also send the spans to this OTLP/gRPC endpoint")
    replay.add_argument("--config", type=Path, help="YAML config file (audited_paths, routes…)")
    replay.set_defaults(func=_replay)


def _add_resend(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    resend = sub.add_parser(
        "resend",
        help="send the dead-letter spool (spans downstream refused for good) again, oldest first",
        description="Lists the dead-letter spool, then sends each entry, oldest first, exactly "
                    "as it was spooled; an entry is removed once downstream accepted it, and "
                    "the first failure stops the run. Exit 0: the spool is empty at the end; "
                    "1: entries remain; 2: usage or configuration error.",
    )
    resend.add_argument(
        "--config", type=Path, help="YAML config file (default: $AUDIT_GUARD_CONFIG, if set)"
    )
    resend.add_argument("--endpoint", metavar="HOST:PORT",
                        help="send to this OTLP/gRPC endpoint instead of exporter.endpoint")
    resend.add_argument("--dry-run", action="store_true", help="list the spool, send nothing")
    resend.set_defaults(func=_resend)


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "doctor", add_help=False,
        help="find why audit logs go missing: checks nginx, Docker, the app, PostgreSQL, "
             "logrotate and collector configs (doctor --help)",
    )


if __name__ == "__main__":
    sys.exit(main())
