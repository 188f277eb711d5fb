"""One row's chain of real programs on loopback, each of which a fault can kill and restart:

    traffic → nginx → demo upstream (writes the app audit log)
    nginx access log + error log + app log → collector (shipped config, file_storage in workdir)
    → `audit-guard serve --config processor.yaml` → recording backend (straight, as shipped;
    the optional collector otlp/egress route with ChainOptions(processor_to_backend=False))

Reuses demo (ManagedProcess, start_collector, render_nginx_conf, the demo upstream).
A restart keeps every port, the collector's storage dir and the processor's state dir.
`close()` stops every process and unmounts the tmpfs, whatever happened before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from demo.backends import CollectorEndpoints, start_collector
from demo.nginx import NginxPaths, nginx_argv, render_nginx_conf
from demo.procs import ManagedProcess, free_port, http_ok, port_open, repo_root

from .backend import MAX_RECV_BYTES, Control
from .lines import append_lines

__all__ = ["Chain", "ChainOptions", "scrape"]


@dataclass(frozen=True)
class ChainOptions:
    backend_max_recv_bytes: int = MAX_RECV_BYTES
    # Mount a tmpfs of this many bytes as the processor's reconcile.state_dir (root only).
    state_dir_tmpfs_bytes: int | None = None
    # The processor exports straight to the backend, as shipped (demo, compose.yaml); False: via
    # the collector's optional otlp/egress route, whose otlp exporter then meets the backend's
    # answers (and drops spans on the ones it does not retry).
    processor_to_backend: bool = True


def scrape(url: str, name: str) -> float | None:
    """Sum of every sample of metric `name` in a Prometheus text page; None when unreachable
    or absent."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode(errors="replace")
    except OSError:
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(None, 1)[1])
                seen = True
    return total if seen else None


class Chain:
    def __init__(self, workdir: Path, options: ChainOptions | None = None) -> None:
        self.workdir = workdir.resolve()
        self.options = options or ChainOptions()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nginx_port, self.upstream_port = free_port(), free_port()
        self.status_port, self.processor_port = free_port(), free_port()
        self.admin_port, self.backend_port = free_port(), free_port()
        self.nginx: NginxPaths = render_nginx_conf(
            self.workdir / "nginx", self.nginx_port, self.upstream_port, self.status_port)
        self.app_log = self.workdir / "app.log"
        self.record_file = self.workdir / "backend.records"
        self.control = Control(self.workdir / "backend.control.json")
        self.state_dir = self.workdir / "processor-state"
        self.processor_config = self.workdir / "processor.yaml"
        self.collector_endpoints: CollectorEndpoints | None = None
        self.procs: dict[str, ManagedProcess] = {}
        self._ready: dict[str, Callable[[], bool]] = {}
        self._mounted = False
        self.injected_lines = 0  # access lines the harness wrote itself (backlog, poison)

    # ------------------------------------------------------------------------------ start

    def start(self) -> Chain:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, name: str, proc: ManagedProcess, ready: Callable[[], bool]) -> None:
        self.procs[name], self._ready[name] = proc, ready

    def _start(self) -> None:
        wd, py = self.workdir, sys.executable
        self.control.ok()
        backend = ManagedProcess("backend", [
            py, "-m", "tests.support.faults.backend", "--port", self.backend_port,
            "--record", self.record_file, "--control", self.control.path,
            "--max-recv-bytes", self.options.backend_max_recv_bytes,
        ], log_dir=wd, cwd=repo_root())
        self._add("backend", backend, lambda: port_open(self.backend_port))
        backend.start().wait_ready(self._ready["backend"], timeout=30)

        collector, ep = start_collector(
            wd, access_log=self.nginx.access_log, nginx_error_log=self.nginx.error_log,
            app_log=self.app_log, processor_endpoint=f"127.0.0.1:{self.processor_port}",
            traces_endpoint=f"127.0.0.1:{self.backend_port}",
            # Nothing serves VTS here (Debian's nginx has no VTS module): a closed port.
            vts_target=f"127.0.0.1:{free_port()}")
        self.collector_endpoints = ep
        self._add("collector", collector,
                  lambda: http_ok(ep.health_url) and port_open(ep.egress_port))

        self.state_dir.mkdir(exist_ok=True)
        if self.options.state_dir_tmpfs_bytes:
            self._mount_tmpfs(self.options.state_dir_tmpfs_bytes)
        config = self.processor_config
        config.write_text(json.dumps({  # JSON is YAML
            "server": {"listen": f"127.0.0.1:{self.processor_port}"},
            "exporter": {"endpoint": f"127.0.0.1:{self.backend_port}"
                         if self.options.processor_to_backend else ep.egress},
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "reconcile": {
                "state_dir": str(self.state_dir),
                "counter_targets": [{"url": f"http://127.0.0.1:{self.status_port}/stub_status",
                                     "format": "stub_status"}],
            },
        }, indent=2))
        processor = ManagedProcess(
            "processor", [py, "-m", "audit_guard.cli", "serve", "--config", config],
            log_dir=wd, cwd=repo_root())
        self._add("processor", processor, lambda: port_open(self.processor_port))
        processor.start().wait_ready(self._ready["processor"], timeout=60)

        upstream = ManagedProcess("upstream", [
            py, "-m", "demo.upstream", "--port", self.upstream_port,
            "--log", self.app_log], log_dir=wd, cwd=repo_root())
        self._add("upstream", upstream, lambda: port_open(self.upstream_port))
        upstream.start().wait_ready(self._ready["upstream"], timeout=30)

        nginx = ManagedProcess("nginx", nginx_argv(self.nginx.conf), log_dir=wd)
        # A TCP connect, not a request: stub_status would count a request nobody logs.
        self._add("nginx", nginx,
                  lambda: port_open(self.nginx_port) and port_open(self.status_port))
        nginx.start().wait_ready(self._ready["nginx"], timeout=30)

    def _mount_tmpfs(self, size: int) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the state-dir-full row mounts a tmpfs: run it as root")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                        str(self.state_dir)], check=True, capture_output=True)
        self._mounted = True

    # ----------------------------------------------------------------------------- faults

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL, timeout: float = 60) -> int:
        """Send `sig` to the program's process group and wait until it has exited."""
        proc = self.procs[name].proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def restart(self, name: str, timeout: float = 60) -> None:
        """Start an exited program again with the same argv, env, ports and directories."""
        proc = self.procs[name]
        assert proc.proc is not None and proc.proc.poll() is not None, f"{name} still runs"
        proc.stop()  # closes its log file
        proc.start().wait_ready(self._ready[name], timeout=timeout)

    def inject(self, lines: Iterable[bytes], chunk: int = 1) -> int:
        """Append lines to nginx's access log (O_APPEND, whole lines) and count them."""
        count = append_lines(self.nginx.access_log, lines, chunk)
        self.injected_lines += count
        return count

    def nginx_reopen_argv(self) -> list[str]:
        return [*nginx_argv(self.nginx.conf), "-s", "reopen"]

    def processor_metric(self, name: str) -> float | None:
        return scrape(f"http://127.0.0.1:{self.admin_port}/metrics", name)

    def collector_metric(self, name: str) -> float | None:
        assert self.collector_endpoints is not None
        return scrape(self.collector_endpoints.metrics_url, name)

    def spool_entries(self) -> int:
        """Files in the processor's dead-letter spool (serve's default: <state_dir>/deadletter)."""
        spool = self.state_dir / "deadletter"
        return sum(1 for p in spool.rglob("*") if p.is_file()) if spool.is_dir() else 0

    def resend(self, timeout: float = 180) -> str:
        """`audit-guard resend` with the processor's config, once the backend accepts again."""
        done = subprocess.run(
            [sys.executable, "-m", "audit_guard.cli", "resend", "--config", self.processor_config],
            capture_output=True, text=True, timeout=timeout, cwd=repo_root())
        last = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""])[-1]
        return f"resend exited {done.returncode}: {last[:200]}"

    def running(self, name: str) -> bool:
        proc = self.procs[name].proc
        return proc is not None and proc.poll() is None

    # ------------------------------------------------------------------------------ close

    def close(self) -> None:
        # Front to back: nothing keeps sending to a program that is already gone.
        for name in ("nginx", "upstream", "collector", "processor", "backend"):
            proc = self.procs.get(name)
            if proc is not None and proc.proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop()
        if self._mounted:
            done = subprocess.run(["umount", str(self.state_dir)], capture_output=True)
            if done.returncode != 0:  # still busy: detach it now, freed when unused
                subprocess.run(["umount", "-l", str(self.state_dir)], capture_output=True)
            self._mounted = False

    def __enter__(self) -> Chain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
