#!/usr/bin/env python3
"""Two trees' CPU a record, measured at the same moment — not a test.

`make bench` runs one tree; on a shared machine its figure moves ±25 % within minutes, more than
most changes do, and alternating runs of two trees land in different phases. Here both trees
run at once, each pinned to one of two cores, then swapped: whatever the machine does, it does
to both. Each runs the serve path in process — `build_service`, then `handle_logs` on each
request as the gRPC handler calls it (parse, pipeline, admin bookkeeping, commit) — with the
hand-off to downstream left out (an exporter that accepts at once: the hand-off's own cost is in
`make bench`). Figures: thread CPU µs a record, per repetition of `--records` records.

    .venv/bin/python scripts/bench_side_by_side.py 7c51ca7     # that commit against the worktree

The other tree is checked out into a temporary git worktree and its C extensions built there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(cpu: int, ready: Path, go: Path, records: int, reps: int) -> None:
    """One tree's measurement (the tree is the one on sys.path: PYTHONPATH)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT))
    import logging

    import bench
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from demo.procs import free_port

    os.environ.update({"AUDIT_GUARD_EXPORTER__ENDPOINT": "127.0.0.1:9",
                       "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}"})
    logging.disable(logging.WARNING)
    from audit_guard.config import load_settings
    from audit_guard.handoff import ExportOutcome
    from audit_guard.serve import build_service
    from audit_guard.sources import nginx_access

    native = getattr(nginx_access, "native_decoder", lambda: False)()  # older trees: msgspec
    try:  # the gRPC server's deserializer
        from audit_guard.wire import read_logs_request as read
    except ImportError:  # older trees: upb
        read = ExportLogsServiceRequest.FromString
    os.sched_setaffinity(0, {cpu})
    server = build_service(load_settings()).server
    server.exporter.export = lambda traces, n, deadline=None: ExportOutcome(n, 0, "")
    now_s = int(time.time())
    for raw in bench.make_batches(40_000, 2000, first=10**12, start_s=now_s):  # warm-up
        server.handle_logs(read(raw), None)
    batches = bench.make_batches(records, 2000, first=0, start_s=now_s + 10)
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    figures = []
    for _ in range(reps):  # the same records again: re-sends, as the collector's retries are
        started = time.thread_time()
        for raw in batches:
            server.handle_logs(read(raw), None)
        figures.append((time.thread_time() - started) / records * 1e6)
    print("C" if native else "msgspec", " ".join(f"{f:.3f}" for f in figures))


def other_tree(ref: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), ref],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into,
                   check=True, capture_output=True)
    return into / "processor"


def run_pair(trees: dict[str, Path], cpus: dict[str, int], args: argparse.Namespace,
             scratch: Path, decoders: dict[str, str]) -> dict[str, list[float]]:
    go = scratch / "go"
    go.unlink(missing_ok=True)
    procs = {}
    for name, tree in trees.items():
        ready = scratch / f"ready-{name}"
        ready.unlink(missing_ok=True)
        procs[name] = (ready, subprocess.Popen(
            [sys.executable, __file__, "--worker", str(cpus[name]), str(ready), str(go),
             "--records", str(args.records), "--reps", str(args.reps)],
            env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE, text=True))
    while not all(ready.exists() or proc.poll() is not None for ready, proc in procs.values()):
        time.sleep(0.1)
    go.touch()
    out = {}
    for name, (_, proc) in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"the {name} tree's worker failed (exit {proc.returncode})")
        decoder, *values = stdout.split()
        decoders[name] = decoder
        out[name] = [float(f) for f in values]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", nargs="?", default="HEAD~1",
                        help="the other tree: a commit, compared with the working tree")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=4, help="repetitions a run")
    parser.add_argument("--pairs", type=int, default=2, help="runs on each core arrangement")
    parser.add_argument("--worker", nargs=3, metavar=("CPU", "READY", "GO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.worker[0]), Path(args.worker[1]), Path(args.worker[2]), args.records,
               args.reps)
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs two CPUs: both trees run at once, one a core")
    figures: dict[str, list[float]] = {args.ref: [], "worktree": []}
    decoders: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sbs-") as tmp:
        scratch = Path(tmp)
        try:
            trees = {args.ref: other_tree(args.ref, scratch / "tree"),
                     "worktree": ROOT / "processor"}
            for n in range(2 * args.pairs):
                placed = dict(zip(trees, cpus[:2] if n % 2 == 0 else cpus[1::-1], strict=True))
                print(f"run {n + 1} of {2 * args.pairs}: " + ", ".join(
                    f"{name} on CPU {cpu}" for name, cpu in placed.items()), flush=True)
                for name, values in run_pair(trees, placed, args, scratch, decoders).items():
                    figures[name] += values
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(scratch / "tree")], capture_output=True)
    print(f"{'µs CPU a record':<28}{'mean':>8}{'median':>8}{'best':>8}   nginx line decoder "
          f"(serve path in process, {args.records} records x {len(figures['worktree'])})")
    for name, values in figures.items():
        print(f"{name:<28}{statistics.mean(values):8.2f}{statistics.median(values):8.2f}"
              f"{min(values):8.2f}   {decoders[name]}")
    old, new = (statistics.median(v) for v in figures.values())
    print(f"worktree / {args.ref} (medians)   {new / old:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
