#!/usr/bin/env python3
"""Fuzz run (make fuzz) — not a test: a million mutated log lines of every source through the
service's pipeline, a share of them through replay too.

Lines are real lines of each format (tests/support/fuzz_corpus.py) with structure-aware mutations:
JSON
values and text tokens replaced by huge, negative and non-finite numbers, years 0001/9999, lone
surrogates, NUL, invalid UTF-8, deep nesting and megabyte values; cuts, byte flips, insertions.
Seeded: the same --seed gives the same lines, so a failure is replayed with its seed and batch.

Each batch is one collector request (read from its bytes, as the gRPC server reads it) through
Pipeline.process_logs (reconciliation armed) and must raise nothing, make one span per record,
decode as an ExportTraceServiceRequest and never need the pipeline's safety net; every
--replay-every'th batch is also replayed as a file. It prints the lines generated per source,
exceptions (must be 0), records flagged and lines/s, and exits 1 on any exception or broken
invariant.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from audit_guard.config import load_settings  # noqa: E402
from audit_guard.correlate.reconcile import RequestReconciler  # noqa: E402
from audit_guard.pipeline import Pipeline  # noqa: E402
from audit_guard.telemetry import BatchStats  # noqa: E402
from tests.support.fuzz_corpus import (  # noqa: E402
    FORMATS,
    FuzzFailure,
    mutated_lines,
    run_replay,
    run_service,
    span_flags,
)

START_NS = 1764165600_000_000_000


def _pipeline(settings: object) -> Pipeline:
    # Reconciliation armed, as in a service that has seen app records: nginx records are then
    # packed into the reconcile journal's layout too.
    reconciler = RequestReconciler(window_s=30, late_horizon_s=300, max_pending=100_000)
    reconciler.armed = True
    return Pipeline(settings, reconciler=reconciler)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in all (>= 1)")
    parser.add_argument("--batch", type=int, default=1000, help="lines per collector request")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay-every", type=int, default=10,
                        help="replay every Nth batch of each source as a file too (0: never)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the run's own output only
    settings = load_settings()
    formats = list(FORMATS)
    per_format = -(-args.lines // len(formats))
    lines_by_source: Counter[str] = Counter()
    records: Counter[str] = Counter()
    flagged: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    exceptions: list[str] = []
    failures: list[str] = []
    replayed = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="audit-guard-fuzz-") as tmp:
        for f_index, fmt in enumerate(formats):
            rnd = random.Random(args.seed * 1000 + f_index)
            pipeline = _pipeline(settings)
            done = 0
            batch_no = 0
            while done < per_format:
                count = min(args.batch, per_format - done)
                lines = mutated_lines(fmt, count, rnd, allow_huge=batch_no % 50 == 7)
                now = START_NS + batch_no * 1_000_000_000
                where = f"{fmt} seed={args.seed} batch={batch_no}"
                try:
                    spans = run_service(pipeline, fmt, lines, now, stats=BatchStats())
                    records[fmt] += len(spans)
                    for span in spans:
                        found = span_flags(span)
                        if found:
                            flagged[fmt] += 1
                            flags.update(found)
                    if args.replay_every and batch_no % args.replay_every == 0:
                        run_replay(fmt, lines, Path(tmp) / f"{fmt}.log", settings)
                        replayed += len(lines)
                except FuzzFailure as exc:
                    failures.append(f"{where}: {exc}")
                except Exception:
                    exceptions.append(f"{where}:\n{traceback.format_exc()}")
                lines_by_source[fmt] += count
                done += count
                batch_no += 1
            print(f"  {fmt:<16} {lines_by_source[fmt]:>9,} lines  {records[fmt]:>9,} records"
                  f"  {flagged[fmt]:>9,} flagged", flush=True)
    elapsed = time.perf_counter() - started
    total = sum(lines_by_source.values())
    print(f"lines generated                 {total:,} ({replayed:,} replayed as files too)")
    print(f"records (spans)                 {sum(records.values()):,}")
    print(f"records flagged                 {sum(flagged.values()):,}")
    print("most common flags               " + ", ".join(
        f"{flag} {n:,}" for flag, n in flags.most_common(8)))
    print(f"exceptions                      {len(exceptions)}")
    print(f"broken invariants               {len(failures)}")
    print(f"elapsed                         {elapsed:.1f} s, {total / elapsed:,.0f} lines/s")
    for text in (exceptions + failures)[:10]:
        print("\n" + text, file=sys.stderr)
    return 1 if exceptions or failures else 0


if __name__ == "__main__":
    sys.exit(main())
