"""`make demo` (python -m demo): the local demo stack — nginx → collector → audit-guard serve →
Jaeger — a traffic burst, and what audit-guard found. The demo is not part of the installed
package: it runs from a checkout, with the tools `make setup` builds."""

from __future__ import annotations

import argparse
import sys

from .run import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make demo",
        description="run the local demo stack: nginx → collector → processor → Jaeger",
    )
    parser.add_argument("--once", action="store_true", help="exit after the summary")
    parser.add_argument("--requests", type=int, default=40, help="requests in the traffic burst")
    args = parser.parse_args(argv)
    return run_demo(once=args.once, requests=args.requests)


if __name__ == "__main__":
    sys.exit(main())
