"""The rows of the fault matrix: one fault each, injected while steady traffic runs.

A row's `fault` runs in the harness's main thread while the traffic threads send; its times
are seconds since the traffic started (`RowContext.at`). It must leave the chain as it found
it (every program running, the backend accepting); the harness restores that anyway if the
fault stops half-way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .chain import Chain, ChainOptions
from .lines import backlog_lines, poison_line
from .traffic import Traffic

__all__ = ["BACKEND_CODES", "RowContext", "Scenario", "egress_rows", "full_matrix",
           "short_matrix"]

# Non-OK answers a backend may give (issue #11, point 6); RESOURCE_EXHAUSTED without RetryInfo.
BACKEND_CODES = ("UNAVAILABLE", "UNAUTHENTICATED", "PERMISSION_DENIED", "INTERNAL",
                 "UNIMPLEMENTED", "RESOURCE_EXHAUSTED")


@dataclass
class RowContext:
    chain: Chain
    traffic: Traffic
    rng: random.Random
    log: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    # (start, end) in Unix seconds where the fault itself may lose lines before any reader
    # (logrotate's copytruncate): answered requests missing from every file are excused there.
    lossy_windows: list[tuple[float, float]] = field(default_factory=list)

    def at(self, second: float) -> None:
        """Sleep until `second` seconds after the traffic started."""
        time.sleep(max(0.0, self.started + second - time.monotonic()))


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    seconds: float  # traffic duration; requests = seconds x rate
    fault: Callable[[RowContext], None]
    options: ChainOptions = ChainOptions()
    prepare: Callable[[Chain, Callable[[str], None]], None] | None = None
    rate: float | None = None  # requests/s; None: the harness's rate


# ------------------------------------------------------------------------------------ faults


def no_fault(ctx: RowContext) -> None:
    pass


def signal_then_restart(name: str, sig: signal.Signals, at: float, down: float = 2.0
                        ) -> Callable[[RowContext], None]:
    def fault(ctx: RowContext) -> None:
        ctx.at(at)
        code = ctx.chain.kill(name, sig)
        ctx.log(f"{name}: {sig.name} → exited {code}; restarting in {down:.0f}s")
        time.sleep(down)
        ctx.chain.restart(name)
        ctx.log(f"{name}: running again")
    return fault


def kill_collector_randomly(times: int, seconds: float) -> Callable[[RowContext], None]:
    def fault(ctx: RowContext) -> None:
        moments = sorted(ctx.rng.uniform(0.1, 0.8) * seconds for _ in range(times))
        for moment in moments:
            ctx.at(moment)
            ctx.chain.kill("collector", signal.SIGKILL)
            down = ctx.rng.uniform(0.5, 2.0)
            ctx.log(f"collector: SIGKILL at {moment:.1f}s; restart after {down:.1f}s")
            time.sleep(down)
            ctx.chain.restart("collector")
    return fault


def backend_down(at: float, down: float) -> Callable[[RowContext], None]:
    def fault(ctx: RowContext) -> None:
        ctx.at(at)
        ctx.chain.kill("backend", signal.SIGTERM)
        ctx.log(f"backend: stopped (port closed) for {down:.0f}s")
        time.sleep(down)
        ctx.chain.restart("backend")
        ctx.log("backend: accepting again")
    return fault


def backend_answers(code: str | None, at: float, seconds: float) -> Callable[[RowContext], None]:
    """`code` None: OK with a partial_success that rejects every span."""
    def fault(ctx: RowContext) -> None:
        ctx.at(at)
        if code is None:
            ctx.chain.control.partial(seconds)
        else:
            ctx.chain.control.status(code, seconds)
        ctx.log(f"backend: answering {code or 'partial_success (all rejected)'} "
                f"for {seconds:.0f}s")
        time.sleep(seconds)
        ctx.chain.control.ok()
    return fault


def _logrotate(ctx: RowContext, copytruncate: bool) -> list[str]:
    chain = ctx.chain
    conf = chain.workdir / "logrotate.conf"
    # Debian's nginx stanza (compress + delaycompress), rotated on demand (-f).
    how = ("    copytruncate\n" if copytruncate else
           "    sharedscripts\n    postrotate\n"
           f"        {shlex.join(chain.nginx_reopen_argv())}\n    endscript\n")
    conf.write_text(f"{chain.nginx.access_log} {chain.nginx.error_log} {{\n"
                    "    rotate 5\n    missingok\n    notifempty\n"
                    f"    compress\n    delaycompress\n{how}}}\n")
    return ["logrotate", "-f", "-s", str(chain.workdir / "logrotate.state"), str(conf)]


def rotate(copytruncate: bool, moments: tuple[float, ...]) -> Callable[[RowContext], None]:
    def fault(ctx: RowContext) -> None:
        argv = _logrotate(ctx, copytruncate)
        for moment in moments:
            ctx.at(moment)
            began = time.time()
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if copytruncate:  # what nginx writes between the copy and the truncation is gone
                ctx.lossy_windows.append((began, time.time()))
            if done.returncode != 0:
                raise RuntimeError(f"logrotate failed ({done.returncode}): {done.stderr}")
            ctx.log(f"logrotate ({'copytruncate' if copytruncate else 'rename + reopen'}) "
                    f"at {moment:.0f}s")
    return fault


def fill_state_dir(at: float, full: float) -> Callable[[RowContext], None]:
    def fault(ctx: RowContext) -> None:
        ctx.at(at)
        filler = ctx.chain.state_dir / "filler"
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        ctx.log(f"state dir: full (tmpfs); freed again in {full:.0f}s")
        time.sleep(full)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(filler)
        ctx.log("state dir: space freed")
    return fault


def poison_every(lines: int) -> Callable[[RowContext], None]:
    """One poisoned line appended (O_APPEND, whole) after every `lines` answered requests."""
    def fault(ctx: RowContext) -> None:
        n = 0  # poisoned lines so far; lines in the log = answered requests + n
        while True:
            if ctx.traffic.answered + n >= (n + 1) * lines:
                what, line = poison_line(n)
                ctx.chain.inject([line])
                ctx.log(f"poisoned line {n + 1}: {what}")
                n += 1
            elif ctx.traffic.finished:
                return
            else:
                time.sleep(0.05)
    return fault


def write_backlog(count: int, user_agent_chars: int
                  ) -> Callable[[Chain, Callable[[str], None]], None]:
    def prepare(chain: Chain, log: Callable[[str], None]) -> None:
        written = chain.inject(backlog_lines(count, user_agent_chars), chunk=1000)
        size = Path(chain.nginx.access_log).stat().st_size
        log(f"backlog: {written} lines ({size / 1e6:.1f} MB) in the access log before start")
    return prepare


# ------------------------------------------------------------------------------------- rows


def full_matrix() -> list[Scenario]:
    rows = [
        Scenario("baseline", "no fault (checks the measurement itself)", 30, no_fault),
        Scenario("kill-processor", "kill -9 processor, restart after 2s", 40,
                 signal_then_restart("processor", signal.SIGKILL, at=15)),
        Scenario("kill-collector", "kill -9 collector 3x at random moments, same storage", 60,
                 kill_collector_randomly(3, 60)),
        Scenario("sigterm-processor", "SIGTERM processor, restart after 2s", 40,
                 signal_then_restart("processor", signal.SIGTERM, at=15)),
        Scenario("backend-down", "backend stopped (port closed) for 60s", 90,
                 backend_down(at=10, down=60)),
    ]
    rows += [Scenario(f"backend-{code.lower().replace('_', '-')}",
                      f"backend answers {code} for 30s", 45, backend_answers(code, 8, 30))
             for code in BACKEND_CODES]
    rows += [
        Scenario("backend-partial", "backend: partial_success rejecting every span, 30s", 45,
                 backend_answers(None, 8, 30)),
        Scenario("backlog-4mib", "100,000 lines with 300-char user agents in the log before "
                 "start; backend limit 4 MiB", 30, no_fault,
                 prepare=write_backlog(100_000, 300)),
        Scenario("rotate-rename", "logrotate: rename + nginx -s reopen (compress, "
                 "delaycompress), 3x", 60, rotate(False, (15, 30, 45))),
        Scenario("rotate-copytruncate", "logrotate: copytruncate (compress, delaycompress), 3x",
                 60, rotate(True, (15, 30, 45))),
        Scenario("state-dir-full", "processor reconcile.state_dir (8 MiB tmpfs) full for 30s",
                 60, fill_state_dir(at=15, full=30),
                 options=ChainOptions(state_dir_tmpfs_bytes=8 * 1024 * 1024)),
        Scenario("poisoned", "one poisoned line every 5,000 lines (msec -1, year 9999, "
                 "status 70000, bytes > int64, lone surrogate, year 0001)", 100,
                 poison_every(5000), rate=300),
    ]
    return rows


def egress_rows() -> list[Scenario]:
    """Opt-in (`--via-egress`): the backend-answer rows with the spans routed through the
    collector's optional otlp/egress instead of straight to the backend: the collector's otlp
    exporter meets the backend's answers and drops spans on those it does not retry (these rows
    document that limit of the optional route; they are expected to lose records)."""
    egress = ChainOptions(processor_to_backend=False)
    rows = [Scenario(f"egress-{code.lower().replace('_', '-')}",
                     f"via the collector's otlp/egress; backend answers {code} for 30s", 45,
                     backend_answers(code, 8, 30), options=egress)
            for code in BACKEND_CODES]
    rows.append(Scenario("egress-partial", "via the collector's otlp/egress; partial_success "
                         "rejecting every span, 30s", 45, backend_answers(None, 8, 30),
                         options=egress))
    return rows


def short_matrix() -> list[Scenario]:
    """The `make test` subset: ~5,000 requests, cheap rows."""
    return [
        Scenario("kill-processor", "kill -9 processor, restart after 2s", 15,
                 signal_then_restart("processor", signal.SIGKILL, at=6, down=1)),
        Scenario("backend-unavailable", "backend answers UNAVAILABLE for 10s", 15,
                 backend_answers("UNAVAILABLE", 3, 10)),
        Scenario("poisoned", "one poisoned line every 250 lines", 15, poison_every(250)),
        Scenario("sigterm-processor", "SIGTERM processor, restart after 1s", 15,
                 signal_then_restart("processor", signal.SIGTERM, at=6, down=1)),
    ]
