"""Start, watch and stop the real programs of the demo stack and the end-to-end tests.

Every process gets a log file in the stack's work directory, is waited for until it is ready
(a TCP port accepts, or an HTTP URL answers), and is always stopped: SIGTERM first, SIGKILL after
a grace period. Ports are free loopback ports picked at start.
"""

from __future__ import annotations

import contextlib
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
