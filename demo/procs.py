"""Start, watch and stop the real programs of the demo stack and the end-to-end tests.

Every process gets a log file in the stack's work directory, is waited for until it is ready
(a TCP port accepts, or an HTTP URL answers), and is always stopped: SIGTERM first, SIGKILL after
a grace period. Ports are free loopback ports picked at start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ManagedProcess", "free_port", "repo_root", "tool_path", "wait_until"]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def tool_path(name: str) -> Path:
    """Path of a program built by scripts/bootstrap (collector, jaeger) under .cache/bin.

    The env var AUDIT_GUARD_<NAME>_BIN overrides it (NAME upper-cased, '-' → '_').
    """
    env = os.environ.get(f"AUDIT_GUARD_{name.upper().replace('-', '_')}_BIN")
    path = Path(env) if env else repo_root() / ".cache" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `make setup` (scripts/bootstrap) to build {name}"
        )
    return path


def _listen_ports() -> range:
    """Ports to hand out: below the kernel's ephemeral range. A port taken from that range (what
    bind(0) returns) can be given to any outgoing connection before the program it was picked
    for binds it: the collector dials its exporters' endpoints before its receivers listen, and
    one such dial took a freshly picked receiver port (`bind: address already in use`)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low > 15_000:
        return range(10_000, low)
    return range(high + 1, 65_536) if high < 60_000 else range(0)


_PORTS = _listen_ports()
# Each process walks the range from its own random start, so two picks of one process never
# meet and runs side by side rarely do (a taken port is skipped anyway).
_next_port = itertools.count(int.from_bytes(os.urandom(4)))


def free_port() -> int:
    """A loopback port nothing listens on or is bound to now, outside the ephemeral range."""
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_next_port) % len(_PORTS)]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or in TIME_WAIT): the next one
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no such range here
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ManagedProcess:
    """One child process with its log file; `stop()` is idempotent and bounded."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_dir / f"{name}.log"
        self._env = {**os.environ, **(env or {})}
        # The demo (and the test harness) live beside the package, not in it: `-m demo.upstream`
        # needs the repository root on the path whatever the child's working directory.
        path = self._env.get("PYTHONPATH")
        self._env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(repo_root()), path)))
        self._cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,
        )
        return self

    def wait_ready(self, check: Callable[[], bool], timeout: float = 60) -> ManagedProcess:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} during start-up;"
                    f" last lines of {self.log_path}:\n{self.tail()}"
                )
            return check()

        try:
            wait_until(ready, timeout, f"{self.name} to become ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last lines of {self.log_path}:\n{self.tail()}") from None
        return self

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
