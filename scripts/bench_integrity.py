#!/usr/bin/env python3
"""Integrity benchmark (issue #14) — not a test.

1. The chain's cost on the hot path: the same nginx records through `Pipeline.process_logs`
   with and without the chain stage, alternating, best of N rounds each (µs a record), and the
   chain stage alone over ready-made spans. In CPU time of this thread (`time.thread_time`), as
   `make bench` counts CPU seconds: on a shared machine wall time mostly measures the others.

`verify`'s speed over a million records: scripts/bench_verify.py.

    .venv/bin/python scripts/bench_integrity.py [--rounds N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from audit_guard.config import Settings  # noqa: E402
from audit_guard.integrity.chain import ChainStage  # noqa: E402
from audit_guard.pipeline import Pipeline  # noqa: E402
from audit_guard.record import RecordBatch  # noqa: E402
from tests.support.integrity_trail import access_line, logs_request  # noqa: E402

BATCH = 2000


def hot_path(rounds: int) -> tuple[float, float, float]:
    plain = Pipeline(Settings())
    chained = Pipeline(Settings(), chain=ChainStage(None, instance_id="bench"))
    best = {id(plain): 1e9, id(chained): 1e9}
    first = 0
    for _ in range(rounds):
        for p in (plain, chained):
            # New records every time (no re-sends, no duplicates), made before the clock runs.
            request = logs_request([access_line(first + i) for i in range(BATCH)], first * 300)
            first += BATCH
            started = time.thread_time()
            p.process_logs(request, 42)
            best[id(p)] = min(best[id(p)], time.thread_time() - started)
    bodies = [access_line(i) for i in range(BATCH)]
    stage = ChainStage(None, instance_id="bench")
    batch = RecordBatch("nginx", BATCH, trace_id=[i.to_bytes(16, "big") for i in range(BATCH)],
                        span_id=[i.to_bytes(8, "big") for i in range(BATCH)])
    spans = plain.span_builder.spans(plain.check(plain.parse("nginx", list(bodies))), 42)
    alone = 1e9
    for _ in range(rounds):
        started = time.thread_time()
        stage(batch, spans)
        stage.commit()
        alone = min(alone, time.thread_time() - started)
    return (best[id(plain)] / BATCH * 1e6, best[id(chained)] / BATCH * 1e6,
            alone / BATCH * 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-verify", action="store_true",
                        help="accepted for old command lines: the verify part is "
                             "scripts/bench_verify.py")
    args = parser.parse_args()
    plain, chained, alone = hot_path(args.rounds)
    print(f"pipeline without chain   {plain:6.2f} µs/record")
    print(f"pipeline with chain      {chained:6.2f} µs/record  (+{chained - plain:.2f})")
    print(f"chain stage alone        {alone:6.2f} µs/record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
