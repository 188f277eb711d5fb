#!/usr/bin/env python3
"""`make bench-chain`: the whole chain with one and with two processors, side by side (#12).

    backlog of N nginx access lines (scripts/bench.py's service-API mix, the shipped log format),
    written before the collector starts, so the chain runs flat out
    → the real collector (collector-config/audit-guard.yaml; with two instances also
      audit-guard-scaleout.yaml, its static list pointed at the two local processors)
    → one or two `audit-guard serve` → the fault matrix's recording OTLP backend
      (tests/support/faults/backend.py; straight from the processors, as shipped)

Per run, on fresh state (collector storage, offsets, processor state dirs, backend file):
- records/s end to end: records / (time of the backend's last write − collector start);
- CPU per record: utime+stime (every thread) from /proc/<pid>/stat — the collector's whole life
  (its start-up included), each processor's from just before the collector starts — up to the
  poll (every 0.2 s) that first saw the backend's final size; per record written for the
  collector, the backend and the processors together, and for each processor per record it
  took in (its own share);
- each instance's share: its `audit_records_total` over the instances' sum;
- others' cores: CPU the machine spent meanwhile on anything else (/proc/stat, steal included),
  per second of the run — a shared machine's other work crowds the figures; read them with it.
Nothing is pinned: on 2 cores the collector, the processors and the backend compete, as they
would on one small machine. That is the honest figure, not the best one.

Exit status 1 when a record of the backlog has no nginx span at the backend (or a program
died); the message says which counts differ.

    make bench-chain                         200,000 records, one round (1 then 2 instances)
    make bench-chain ARGS="--rounds 3"       alternating 1, 2, 1, 2, 1, 2; the ratio of medians
    make bench-chain ARGS="--records 5000"   a quick check (tests/e2e/test_bench_chain.py)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from bench import cpu_seconds, make_line  # noqa: E402

from demo.backends import start_collector  # noqa: E402
from demo.procs import ManagedProcess, free_port, port_open  # noqa: E402
from tests.support.faults.backend import Control  # noqa: E402
from tests.support.faults.chain import scrape  # noqa: E402
from tests.support.faults.lines import append_lines  # noqa: E402
from tests.support.faults.measure import Delivered  # noqa: E402

SCALEOUT = ROOT / "collector-config" / "audit-guard-scaleout.yaml"
POLL_S = 0.2
# The backend quiet this long: read what it got and see whether every record is there.
QUIET_S = 2.0


@dataclass
class Run:
    instances: int
    records: int
    wall_s: float = 0.0
    collector_cpu_s: float = 0.0
    processor_cpu_s: list[float] = field(default_factory=list)
    backend_cpu_s: float = 0.0
    records_per_instance: list[float] = field(default_factory=list)
    # CPU seconds the whole machine spent on anything but these programs meanwhile (other
    # work on a shared machine; steal time counts): how much the figures were crowded.
    others_cpu_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def us(self, cpu_s: float) -> float:
        return cpu_s / self.records * 1e6

    @property
    def rate(self) -> float:
        return self.records / self.wall_s if self.wall_s else 0.0

    @property
    def chain_us(self) -> float:
        """CPU per record of the collector and every processor together."""
        return self.us(self.collector_cpu_s + sum(self.processor_cpu_s))


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def write_backlog(path: Path, records: int, first: int) -> set[str]:
    """`records` lines numbered from `first`; returns their request ids (the nginx spans'
    trace ids)."""
    lines = [make_line(i) + b"\n" for i in range(first, first + records)]
    append_lines(path, lines, chunk=1000)
    return {line[line.index(b'"request_id":"') + 14:][:32].decode() for line in lines}


@dataclass
class Instance:
    proc: ManagedProcess
    otlp_port: int
    admin_port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.otlp_port}"

    def records(self) -> float:
        """Records it took in (`audit_records_total`, every source: nginx only here)."""
        return scrape(f"http://127.0.0.1:{self.admin_port}/metrics", "audit_records_total") or 0.0


def _processor(wd: Path, index: int, instances: int, backend_port: int) -> Instance:
    """One `audit-guard serve` as docs/scale-out.md sets instances behind load_balancing (one
    instance: the shipped defaults)."""
    otlp_port, admin_port = free_port(), free_port()
    env = {"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp_port}",
           "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{admin_port}",
           "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{backend_port}",
           "AUDIT_GUARD_RECONCILE__STATE_DIR": str(wd / f"processor-{index}-state"),
           "AUDIT_GUARD_LOG_LEVEL": "warning"}
    if instances > 1:
        env |= {"AUDIT_GUARD_ERROR_JOIN_UNJOINED": "drop",
                "AUDIT_GUARD_RECONCILE__RESTART_HOLD_S": "60"}
    proc = ManagedProcess(f"processor-{index}",
                          [sys.executable, "-m", "audit_guard.cli", "serve"],
                          log_dir=wd, env=env, cwd=ROOT).start()
    return Instance(proc, otlp_port, admin_port)


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine was not idle since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # − idle, iowait


def _pid(proc: ManagedProcess) -> int:
    assert proc.proc is not None
    return proc.proc.pid


def _cpu(procs: Iterable[ManagedProcess]) -> list[float]:
    return [cpu_seconds(_pid(p)) for p in procs]


def missing_report(written: set[str], delivered: Iterable[str]) -> str | None:
    """None when every written request id has an nginx span at the backend; else what differs."""
    lost = written - set(delivered)
    if not lost:
        return None
    return (f"{len(written):,} records written, {len(written) - len(lost):,} delivered "
            f"(an nginx span at the backend): {len(lost):,} missing, e.g. "
            + ", ".join(sorted(lost)[:3]))


class _Watch:
    """Polls the backend's record file and the programs' CPU until every record arrived."""

    def __init__(self, record_file: Path, procs: list[ManagedProcess], written: set[str],
                 max_idle_s: float) -> None:
        self.record_file, self.procs, self.written = record_file, procs, written
        self.max_idle_s = max_idle_s
        self.delivered = Delivered(record_file)
        self.cpu_at_last_write: list[float] = []
        self.busy_at_last_write = 0.0
        self.last_write = 0.0  # epoch seconds (the file's mtime)

    def run(self) -> str | None:
        """Returns None when complete, else why it stopped waiting."""
        size, last_growth = -1, time.monotonic()
        while True:
            stat = self.record_file.stat() if self.record_file.exists() else None
            # CPU first read right after a write (within POLL_S).
            now, cpu, busy = time.monotonic(), _cpu(self.procs), machine_busy_seconds()
            if stat is not None and stat.st_size != size:
                size, last_growth = stat.st_size, now
                self.last_write, self.cpu_at_last_write = stat.st_mtime, cpu
                self.busy_at_last_write = busy
            idle = now - last_growth
            if size > 0 and idle >= QUIET_S:
                # Decoding every span costs this process CPU: only once the backend is quiet.
                self.delivered.update()
                if self.written <= self.delivered.copies.keys():
                    return None
            dead = [f"{p.name} exited with code {p.proc.returncode}" for p in self.procs
                    if p.proc is not None and p.proc.poll() is not None]
            if dead:
                return "; ".join(dead)
            if idle >= self.max_idle_s:
                return f"nothing new at the backend for {idle:.0f}s"
            time.sleep(POLL_S)


def run_chain(wd: Path, instances: int, records: int, first: int, max_idle_s: float,
              extra_configs: list[Path]) -> Run:
    """One run on fresh state in `wd`: start backend and processors, write the backlog, start
    the collector, wait for every span, stop everything. `extra_configs`: merged over the
    shipped files (to measure a variant)."""
    run = Run(instances, records)
    wd.mkdir(parents=True)
    started: list[ManagedProcess] = []
    try:
        backend_port, record_file = free_port(), wd / "backend.records"
        control = Control(wd / "backend.control.json")
        control.ok()
        backend = ManagedProcess("backend", [
            sys.executable, "-m", "tests.support.faults.backend", "--port", backend_port,
            "--record", record_file, "--control", control.path], log_dir=wd, cwd=ROOT).start()
        started.append(backend)
        processors = [_processor(wd, i, instances, backend_port) for i in range(instances)]
        started += [p.proc for p in processors]
        backend.wait_ready(lambda: port_open(backend_port), timeout=30)
        for p in processors:
            p.proc.wait_ready(lambda p=p: port_open(p.otlp_port), timeout=60)
        access_log = wd / "access.log"
        written = write_backlog(access_log, records, first)
        endpoints = [p.endpoint for p in processors]
        processor_procs = [p.proc for p in processors]
        cpu0 = _cpu([*processor_procs, backend])
        start, busy0 = time.time(), machine_busy_seconds()
        collector, _ = start_collector(
            wd / "collector", access_log=access_log, processor_endpoint=endpoints[0],
            traces_endpoint=f"127.0.0.1:{backend_port}",
            vts_target=f"127.0.0.1:{free_port()}",  # nothing serves VTS here: a closed port
            overlays=[*([SCALEOUT] if instances > 1 else []), *extra_configs],
            extra_env={f"AUDIT_GUARD_PROCESSOR_{i}_ENDPOINT": ep
                       for i, ep in enumerate(endpoints)})
        started.append(collector)
        watch = _Watch(record_file, [collector, *processor_procs, backend], written, max_idle_s)
        stopped = watch.run()
        cpu1 = watch.cpu_at_last_write or _cpu(watch.procs)
        busy1 = watch.busy_at_last_write or machine_busy_seconds()
        run.wall_s = watch.last_write - start
        run.collector_cpu_s = cpu1[0]
        # cpu1: collector, processors…, backend; cpu0: processors…, backend.
        run.processor_cpu_s = [b - a for a, b in zip(cpu0[:-1], cpu1[1:-1], strict=True)]
        run.backend_cpu_s = cpu1[-1] - cpu0[-1]
        run.records_per_instance = [p.records() for p in processors]
        run.others_cpu_s = busy1 - busy0 - (sum(cpu1) - sum(cpu0))
        watch.delivered.update()
        report = missing_report(written, watch.delivered.copies)
        run.problems += [x for x in (report, stopped) if x]
        if watch.delivered.other_spans:
            run.problems.append(f"{watch.delivered.other_spans} spans that are not nginx records"
                                " (expected none: the backlog is nginx lines only)")
    finally:
        for proc in reversed(started):  # front to back
            proc.stop()
    return run


COLUMNS = ("instances", "records/s end to end", "wall s", "collector µs/rec",
           "processor µs per own rec", "processors µs/rec", "backend µs/rec",
           "share of records per instance", "others' cores")


def _cells(run: Run) -> list[str]:
    total = sum(run.records_per_instance) or 1.0
    return [
        str(run.instances), f"{run.rate:,.0f}", f"{run.wall_s:.1f}",
        f"{run.us(run.collector_cpu_s):.1f}",
        " · ".join(f"{c / n * 1e6 if n else 0.0:.1f}"
                   for c, n in zip(run.processor_cpu_s, run.records_per_instance, strict=True)),
        f"{run.us(sum(run.processor_cpu_s)):.1f}", f"{run.us(run.backend_cpu_s):.1f}",
        " · ".join(f"{100 * n / total:.1f} %" for n in run.records_per_instance),
        f"{run.others_cpu_s / run.wall_s if run.wall_s else 0.0:.2f}",
    ]


def _line(cells: list[str]) -> str:
    return "  ".join(c.rjust(len(title)) for c, title in zip(cells, COLUMNS, strict=True))


def print_table(runs: list[Run]) -> None:
    print("  ".join(COLUMNS))
    for run in runs:
        print(_line(_cells(run)))
    one = [r for r in runs if r.instances == 1]
    two = [r for r in runs if r.instances == 2]
    if one and two:
        rate = statistics.median(r.rate for r in two) / statistics.median(r.rate for r in one)
        cpu = (statistics.median(r.chain_us for r in two)
               / statistics.median(r.chain_us for r in one))
        what = "medians of the rounds" if len(one) > 1 else "one run each"
        print(f"ratio two/one ({what}): end to end {rate:.2f}× the records/s; CPU per record "
              f"(collector + processors) {cpu:.2f}×")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of (one instance, two instances), alternating")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="default .cache/bench-chain/<time>; removed after unless --keep")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs (logs, files)")
    parser.add_argument("--max-idle", type=float, default=120,
                        help="seconds without a new span before a run gives up")
    parser.add_argument("--instances", default="1,2",
                        help="the runs of a round, in order (e.g. 2: two instances only)")
    parser.add_argument("--extra-config", type=Path, action="append", default=[],
                        help="a collector config merged over the shipped ones (a variant)")
    args = parser.parse_args()
    workroot = args.workdir or ROOT / ".cache" / "bench-chain" / time.strftime("%Y%m%d-%H%M%S")
    _log(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; work dirs under {workroot}")
    runs: list[Run] = []
    order = [int(x) for x in args.instances.split(",")]
    for n, instances in enumerate(i for _ in range(args.rounds) for i in order):
        wd = workroot / f"run-{n + 1}-{instances}"
        _log(f"run {n + 1}: {instances} instance(s), {args.records:,} records")
        run = run_chain(wd, instances, args.records, first=n * args.records,
                        max_idle_s=args.max_idle, extra_configs=args.extra_config)
        _log(f"run {n + 1}: {run.rate:,.0f} records/s end to end over {run.wall_s:.1f}s"
             + "".join(f"; PROBLEM: {p}" for p in run.problems))
        runs.append(run)
        if not args.keep and not run.problems:
            shutil.rmtree(wd, ignore_errors=True)
    print(f"records per run {args.records:,}; {os.cpu_count()} CPUs, nothing pinned"
          + "".join(f"; plus {c}" for c in args.extra_config))
    print_table(runs)
    problems = [f"run {n + 1} ({r.instances} instance(s)): {p}"
                for n, r in enumerate(runs) for p in r.problems]
    for problem in problems:
        print(f"FAILED {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
