"""Runs fault-matrix rows, one fresh chain each, and prints the table.

Each row gets its own work dir, chain (fresh ports, storage and state), and traffic, so a
row's records are exactly the lines in its own log files and no row inherits another's
backlog or spool. A fresh chain starts in ~5 s, cheap next to the row's traffic.

A row: start the chain → traffic and the fault side by side → make sure every program runs
and the backend accepts → drain (until every written record arrived, or nothing moved for a
while) → stop the chain → count (tests/support/faults/measure.py). Exit status of `main`: 0 when
every
row lost and rewrote nothing, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from demo.procs import repo_root

from .chain import Chain
from .measure import (
    Delivered,
    Reference,
    RowResult,
    compare,
    log_files,
    unlogged_requests,
    written_ids,
)
from .scenarios import RowContext, Scenario, egress_rows, full_matrix, short_matrix
from .traffic import Traffic

__all__ = ["format_table", "main", "run_row", "run_rows"]

COLUMNS = ("row", "sent", "written", "unlogged", "delivered", "lost", "rewritten", "spooled",
           "duplicates", "seconds")


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class SpoolSampler:
    """Reads the processor's `audit_spans_deadlettered_total` every 2 s, per processor
    incarnation (a restart starts the counter at 0 again): the total is the sum of each
    incarnation's last reading."""

    METRIC = "audit_spans_deadlettered_total"

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.by_pid: dict[int, float] = {}
        self.metric_seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-sampler", daemon=True)

    def sample(self) -> None:
        proc = self.chain.procs["processor"].proc
        value = self.chain.processor_metric(self.METRIC)
        if proc is not None and value is not None:
            self.metric_seen = True
            self.by_pid[proc.pid] = max(value, self.by_pid.get(proc.pid, 0.0))

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            self.sample()

    def start(self) -> SpoolSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sample()
        return int(sum(self.by_pid.values()))


def _restore(chain: Chain) -> None:
    """After a fault, whatever it did: every program running, the backend accepting."""
    chain.control.ok()
    for name in ("backend", "processor", "collector", "upstream", "nginx"):
        if not chain.running(name):
            _log(f"{name} was not running after the fault: restarting it")
            chain.restart(name)


def _all_written(chain: Chain) -> list[Path]:
    return log_files(chain.nginx.workdir, "access.log")


def _drain(chain: Chain, delivered: Delivered, quiet_s: float, idle_queues_s: float,
           max_s: float) -> str:
    """Wait until every written record was delivered, or nothing arrived for `quiet_s`
    (`idle_queues_s` when the collector's sending queues are empty), or `max_s` passed."""
    start = last_progress = time.monotonic()
    next_scan = 0.0
    while True:
        now = time.monotonic()
        if delivered.update():
            last_progress = now
        if now >= next_scan:
            written, _ = written_ids(_all_written(chain))
            if written and all(rid in delivered.copies for rid in written):
                return f"complete after {now - start:.0f}s"
            next_scan = now + 3
        idle = now - last_progress
        queued = chain.collector_metric("otelcol_exporter_queue_size")
        if idle >= quiet_s or (queued == 0 and idle >= idle_queues_s):
            return f"stopped waiting: nothing new for {idle:.0f}s (collector queues: {queued})"
        if now - start >= max_s:
            return f"stopped waiting after {max_s:.0f}s (still arriving)"
        time.sleep(1)


def _start_chain(scenario: Scenario, workroot: Path, notes: list[str]) -> Chain:
    """A started chain. Start-up is tried twice, the second time on fresh ports in a fresh
    dir: a port found free can be taken (e.g. as the source port of some program's outgoing
    connection) before our program binds it."""
    for attempt in (1, 2):
        name = scenario.name if attempt == 1 else f"{scenario.name}.retry"
        chain = Chain(workroot / name, scenario.options)
        _log(f"[{scenario.name}] {scenario.what}: starting the chain in {chain.workdir}")
        try:
            if scenario.prepare is not None:
                scenario.prepare(chain, _log)
            return chain.start()
        except Exception as exc:
            chain.close()
            if attempt == 2:
                raise
            first = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
            notes.append(f"start-up failed once ({first}); retried on fresh ports")
            _log(f"[{scenario.name}] start-up failed: {exc}")
    raise AssertionError("unreachable")


def run_row(scenario: Scenario, workroot: Path, rate: float, seed: int,
            quiet_s: float = 45, idle_queues_s: float = 35, max_drain_s: float = 300
            ) -> RowResult:
    result = RowResult(scenario.name)
    started = time.monotonic()
    chain: Chain | None = None
    traffic: Traffic | None = None
    sampler: SpoolSampler | None = None
    ctx: RowContext | None = None
    row_rate = scenario.rate or rate
    try:
        chain = _start_chain(scenario, workroot, result.notes)
        delivered = Delivered(chain.record_file)
        sampler = SpoolSampler(chain).start()
        requests = int(scenario.seconds * row_rate)
        _log(f"[{scenario.name}] traffic: {requests} requests at {row_rate:.0f}/s")
        traffic = Traffic(chain.nginx_port, requests, row_rate).start()
        ctx = RowContext(chain, traffic, random.Random(f"{seed}-{scenario.name}"),
                         lambda msg: _log(f"[{scenario.name}] {msg}"))
        try:
            scenario.fault(ctx)
        finally:
            _restore(chain)
        sent = traffic.wait()
        result.sent = sent.sent
        if sent.failed:
            result.notes.append(f"{sent.failed} requests got no answer from nginx")
        _log(f"[{scenario.name}] traffic done ({sent.sent} answered in {sent.seconds:.0f}s); "
             "draining")
        how = _drain(chain, delivered, quiet_s, idle_queues_s, max_drain_s)
        _log(f"[{scenario.name}] {how}")
        result.notes.append(how)
        if any(sampler.by_pid.values()) or chain.spool_entries():
            # What the processor spooled is delivered by `resend` once downstream accepts.
            resent = chain.resend()
            _log(f"[{scenario.name}] {resent}")
            result.notes.append(resent)
            result.notes.append(_drain(chain, delivered, quiet_s, idle_queues_s, max_drain_s))
        result.spooled = sampler.stop()
        if not sampler.metric_seen:
            result.notes.append("audit_spans_deadlettered_total never on /metrics: spooled 0")
        sampler = None
    except Exception as exc:  # the row's own failure: reported in the table, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
        _log(f"[{scenario.name}] ERROR {result.error}")
    finally:
        if traffic is not None:
            traffic.stop()
        if sampler is not None:
            sampler.stop()
        if chain is not None:
            chain.close()
    if chain is None:
        result.seconds = time.monotonic() - started
        return result
    try:
        delivered.update()
        files = _all_written(chain)
        written, unidentified = written_ids(files)
        if unidentified:
            result.notes.append(f"{unidentified} lines without a request id")
        inputs = files + log_files(chain.nginx.workdir, "error.log") + \
            log_files(chain.workdir, "app.log")
        compare(result, written, delivered, Reference.of(inputs))
        result.unlogged = max(0, result.sent - (len(written) - chain.injected_lines))
        if result.unlogged:
            result.notes.append(f"{result.unlogged} answered requests have no line in any log "
                                "file")
            excused, other = unlogged_requests(log_files(chain.workdir, "app.log"), written,
                                               ctx.lossy_windows if ctx else [])
            result.unlogged_excused = min(len(excused), result.unlogged)
            if excused:
                result.notes.append(
                    f"{len(excused)} of them written while logrotate's copytruncate ran (its "
                    f"own loss, before any reader: doctor warns on copytruncate): "
                    f"{', '.join(excused[:3])}")
            if other:
                result.notes.append(f"not during a rotation: {', '.join(other[:3])}")
    except Exception as exc:
        result.error = result.error or f"measuring failed: {type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - started
    _log(f"[{scenario.name}] " + "  ".join(f"{c}={v}" for c, v in _cells(result).items()))
    return result


def _cells(r: RowResult) -> dict[str, str]:
    return {"row": r.name, "sent": str(r.sent), "written": str(r.written),
            "unlogged": str(r.unlogged),
            "delivered": str(r.delivered), "lost": str(r.lost), "rewritten": str(r.rewritten),
            "spooled": str(r.spooled), "duplicates": str(r.duplicates),
            "seconds": f"{r.seconds:.0f}"}


def format_table(results: list[RowResult], markdown: bool = False) -> str:
    rows = [[*_cells(r).values(), "ok" if r.ok else ("ERROR" if r.error else "FAIL")]
            for r in results]
    head = [*COLUMNS, "result"]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), *(fmt.format(*row) for row in rows)])


def run_rows(scenarios: list[Scenario], workroot: Path, rate: float, seed: int,
             keep: bool = False, **drain: float) -> list[RowResult]:
    results = []
    for scenario in scenarios:
        result = run_row(scenario, workroot, rate, seed, **drain)
        results.append(result)
        if result.ok and not keep:  # failing rows keep their logs and files for a look
            for name in (scenario.name, f"{scenario.name}.retry"):
                shutil.rmtree(workroot / name, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make faults", description="The fault matrix: the real chain, one fault per row.")
    parser.add_argument("--only", action="append", default=[], metavar="ROW",
                        help="run only these rows (repeat, or comma-separated)")
    parser.add_argument("--short", action="store_true", help="the make-test subset")
    parser.add_argument("--via-egress", action="store_true",
                        help="add the egress-* rows: the backend's answers with the spans "
                             "routed through the collector's optional otlp/egress (~8 min "
                             "more; they show that route's losses)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--rate", type=float, default=80.0, help="requests/s (default 80)")
    parser.add_argument("--seed", type=int, default=None, help="random moments' seed")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="default .cache/faults/<time>; failing rows' dirs are kept")
    parser.add_argument("--keep", action="store_true", help="keep passing rows' dirs too")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    matrix = short_matrix() if args.short else full_matrix()
    if args.via_egress or any(n.startswith("egress-") for arg in args.only
                              for n in arg.split(",")):
        matrix += egress_rows()
    names = [n for arg in args.only for n in arg.split(",") if n]
    unknown = set(names) - {s.name for s in matrix}
    if unknown:
        print(f"unknown row(s): {', '.join(sorted(unknown))}; rows: "
              f"{', '.join(s.name for s in matrix)}", file=sys.stderr)
        return 2
    if args.list:
        for s in matrix:
            print(f"{s.name:27} {s.seconds:4.0f}s  {s.what}")
        return 0
    chosen = [s for s in matrix if not names or s.name in names]
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    workroot = (args.workdir or repo_root() / ".cache" / "faults" /
                time.strftime("%Y%m%d-%H%M%S")).resolve()
    _log(f"fault matrix: {len(chosen)} row(s), seed {seed}, work dir {workroot}")
    results = run_rows(chosen, workroot, args.rate, seed, keep=args.keep)
    print(format_table(results, markdown=args.markdown))
    for r in results:
        for note in ([r.error] if r.error else []) + r.notes:
            print(f"  {r.name}: {note}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1
