"""The whole demo stack on loopback: demo upstream ← nginx; nginx's access log and the
upstream's app audit log → collector → audit-guard processor → Jaeger.
Used by `audit-guard demo` and the end-to-end tests; every process is stopped by `close()`,
whatever happened.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .backends import JaegerClient, JaegerPorts, start_collector, start_jaeger
from .nginx import NginxPaths, nginx_argv, render_nginx_conf
from .procs import ManagedProcess, free_port, port_open

__all__ = ["Stack"]


@dataclass
class Stack:
    workdir: Path
    processor_env: dict[str, str] = field(default_factory=dict)
    procs: list[ManagedProcess] = field(default_factory=list)
    jaeger_ports: JaegerPorts | None = None
    nginx_port: int = 0
    upstream_port: int = 0
    status_port: int = 0
    processor_port: int = 0
    admin_port: int = 0  # the processor's /metrics
    nginx_paths: NginxPaths | None = None
    app_log: Path | None = None

    def start(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        jaeger, self.jaeger_ports = start_jaeger(wd)
        self.procs.append(jaeger)

        self.nginx_port, self.upstream_port = free_port(), free_port()
        self.status_port, self.processor_port = free_port(), free_port()
        self.admin_port = free_port()
        self.nginx_paths = render_nginx_conf(
            wd / "nginx", self.nginx_port, self.upstream_port, self.status_port
        )
        # The collector retries its sends to the processor until the processor is up.
        self.app_log = wd / "app.log"
        self._start_collector()
        self._start_processor()

        upstream = ManagedProcess(
            "upstream",
            [sys.executable, "-m", "demo.upstream", "--port", str(self.upstream_port),
             "--log", str(self.app_log)],
            log_dir=wd,
        ).start()
        self.procs.append(upstream)
        upstream.wait_ready(lambda: port_open(self.upstream_port), timeout=30)

        nginx = ManagedProcess("nginx", nginx_argv(self.nginx_paths.conf), log_dir=wd).start()
        self.procs.append(nginx)
        # A TCP connect, not a request: stub_status would count a request nobody logs.
        nginx.wait_ready(
            lambda: port_open(self.nginx_port) and port_open(self.status_port), timeout=30
        )

    def _start_collector(self) -> None:
        assert self.nginx_paths is not None and self.jaeger_ports is not None
        assert self.app_log is not None
        collector, endpoints = start_collector(
            self.workdir,
            access_log=self.nginx_paths.access_log,
            nginx_error_log=self.nginx_paths.error_log,
            app_log=self.app_log,
            processor_endpoint=f"127.0.0.1:{self.processor_port}",
            traces_endpoint=self.jaeger_ports.otlp_endpoint,
            # Debian's nginx has no VTS module, so there is nothing for the collector to scrape:
            # a closed port (one failed connect per scrape, no request). A scrape of the status
            # server would be a request stub_status counts and nobody logs. audit-guard reads
            # stub_status itself (reconcile.counter_targets below).
            vts_target=f"127.0.0.1:{free_port()}",
        )
        self.procs.append(collector)

    def _start_processor(self) -> None:
        assert self.jaeger_ports is not None
        wd = self.workdir
        processor = ManagedProcess(
            "processor",
            [sys.executable, "-m", "audit_guard.cli", "serve"],
            log_dir=wd,
            env={
                "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{self.processor_port}",
                # Straight to the trace backend: audit-guard's exporter retries every refusal and
                # spools what is refused for good; the collector's own OTLP exporter would drop
                # spans on UNAUTHENTICATED, PERMISSION_DENIED, INTERNAL, ... (see README).
                "AUDIT_GUARD_EXPORTER__ENDPOINT": self.jaeger_ports.otlp_endpoint,
                "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{self.admin_port}",
                # Pending requests survive a processor restart within the demo's workdir.
                "AUDIT_GUARD_RECONCILE__STATE_DIR": str(wd / "processor-state"),
                "AUDIT_GUARD_RECONCILE__COUNTER_TARGETS": json.dumps([{
                    "url": f"http://127.0.0.1:{self.status_port}/stub_status",
                    "format": "stub_status",
                }]),
                **self.processor_env,
            },
        ).start()
        self.procs.append(processor)
        processor.wait_ready(lambda: port_open(self.processor_port), timeout=60)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def jaeger(self) -> JaegerClient:
        assert self.jaeger_ports is not None
        return JaegerClient(self.jaeger_ports.query_url)

    def close(self) -> None:
        # Front to back, so nothing is still sending to a backend that is gone.
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
