"""Real nginx on the demo config (the shipped snippets) in front of the demo upstream, for the
tests that look at what nginx itself writes (a helper, not a test module).

`nginx_with_upstream(tmp_path)` starts the upstream in a thread and nginx as a child process on
free loopback ports, waits until both of nginx's ports accept (a TCP connect, not a request:
stub_status would count it), and always stops both again. `read_json_lines` / `wait_for_lines`
read nginx's access log (or the upstream's app log), complete lines only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.nginx import NginxPaths, nginx_argv, render_nginx_conf
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from demo.upstream import DemoServer, serve

__all__ = ["NginxUpstream", "nginx_with_upstream", "read_json_lines", "wait_for_lines"]


@dataclass
class NginxUpstream:
    paths: NginxPaths
    upstream: DemoServer
    app_log: Path
    port: int
    status_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}/stub_status"


@contextlib.contextmanager
def nginx_with_upstream(tmp_path: Path) -> Iterator[NginxUpstream]:
    app_log = tmp_path / "app.log"
    upstream = serve(0, app_log)
    nginx: ManagedProcess | None = None
    try:
        port, status_port = free_port(), free_port()
        paths = render_nginx_conf(tmp_path / "nginx", port, upstream.server_address[1], status_port)
        nginx = ManagedProcess("nginx", nginx_argv(paths.conf), tmp_path)
        nginx.start().wait_ready(lambda: port_open(port) and port_open(status_port), timeout=30)
        yield NginxUpstream(
            paths=paths, upstream=upstream, app_log=app_log, port=port, status_port=status_port
        )
    finally:
        if nginx is not None:
            nginx.stop()
        upstream.shutdown()
        upstream.server_close()


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    # Only complete lines: nginx writes each line with one write(), but we may read mid-write.
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_for_lines(path: Path, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    wait_until(lambda: len(read_json_lines(path)) >= count, timeout, f"{count} lines in {path}")
    return read_json_lines(path)
