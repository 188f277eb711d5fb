"""The state alerts of the delivery guarantees, fired by the real programs on loopback:

    audit-guard serve (reconcile.state_dir on a 512 KiB tmpfs that starts with an unreadable
    reconcile.sqlite) → real Jaeger v2
    real Prometheus (Debian package) ← scrapes serve's /metrics, evaluates the shipped
    otel/prometheus/alerts.yml unchanged

AuditStateCorrupt fires once serve has moved the unreadable file aside and started;
AuditStateWriteFailing fires while the state disk is full (the Export is answered UNAVAILABLE),
and processing resumes by itself once space is freed. This also proves the metric names the
rules read are the ones serve's Prometheus exporter writes. AuditRecordsUnprocessable needs a
bug in the pipeline to fire, so its promtool unit test (otel/prometheus/alerts_test.yml) is all
that covers it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from demo.backends import JaegerClient, start_jaeger
from demo.procs import ManagedProcess, free_port, http_ok, port_open, wait_until
from tests.e2e.test_completeness_e2e import Prometheus
from tests.support.otlp_doubles import logs_request
from tests.unit.correlate.test_error_join import ACCESS, RID

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STATE_DISK = "512k"


def request_id(i: int) -> str:
    # A non-zero first digit: Jaeger's API writes trace ids without leading zeros.
    return f"{0x1000 + i:04x}" + RID[4:]


def access_lines(count: int) -> list[str]:
    """`count` distinct access records (their request ids differ in the first 4 hex digits)."""
    return [ACCESS.replace(RID, request_id(i)) for i in range(count)]


class Serve:
    """`audit-guard serve` as the real subprocess, exporting to `otlp_endpoint`."""

    def __init__(self, workdir: Path, state_dir: Path, otlp_endpoint: str) -> None:
        self.port, self.admin = free_port(), free_port()
        self.proc = ManagedProcess("serve", [sys.executable, "-m", "audit_guard.cli", "serve"],
                                   log_dir=workdir, env={
            "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{self.admin}",
            "AUDIT_GUARD_EXPORTER__ENDPOINT": otlp_endpoint,
            "AUDIT_GUARD_EXPORTER__MAX_WAIT_S": "5",
            "AUDIT_GUARD_RECONCILE__STATE_DIR": str(state_dir),
        })

    def start(self) -> Serve:
        self.proc.start().wait_ready(
            lambda: port_open(self.port) and http_ok(f"http://127.0.0.1:{self.admin}/metrics"),
            timeout=60)
        return self

    def export(self, source: str, *bodies: str) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)
            stub.Export(logs_request(*bodies, source=source), timeout=15)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (needs root, as `make test` runs here), so the state disk can be filled."""
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_DISK}", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def firing(prometheus: Prometheus, name: str) -> dict[str, Any] | None:
    alert = prometheus.alert(name)
    return alert if alert is not None and alert["state"] == "firing" else None


def wait_firing(prometheus: Prometheus, name: str, serve: Serve) -> dict[str, Any]:
    try:
        wait_until(lambda: firing(prometheus, name) is not None, 60, f"{name} to fire")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; serve's log:\n{serve.proc.tail()}") from None
    alert = firing(prometheus, name)
    assert alert is not None
    return alert


def test_state_alerts_fire_on_a_corrupt_and_a_full_state_disk(tmp_path: Path,
                                                              state_dir: Path) -> None:
    (state_dir / "reconcile.sqlite").write_bytes(b"not a database, a disk error " * 100)
    jaeger, ports = start_jaeger(tmp_path / "jaeger")
    serve = Serve(tmp_path, state_dir, ports.otlp_endpoint)
    prometheus = Prometheus(tmp_path, serve.admin)
    try:
        serve.start()
        prometheus.start()

        # Started afresh: the unreadable file was moved aside and the alert says so.
        moved = [p.name for p in state_dir.iterdir() if ".corrupt-" in p.name]
        assert len(moved) == 1 and moved[0].startswith("reconcile.sqlite.corrupt-"), moved
        alert = wait_firing(prometheus, "AuditStateCorrupt", serve)
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["instance"] == f"127.0.0.1:{serve.admin}"
        assert float(alert["value"]) == 1
        assert "reconcile.sqlite.corrupt-" in alert["annotations"]["description"]

        # Healthy writes: nothing about them.
        serve.export("app", '{"request_id": "' + "a" * 32 + '", "user_id": "u"}')  # arms
        serve.export("nginx_access", ACCESS)
        assert prometheus.alert("AuditStateWriteFailing") is None

        # Fill the state disk: the next Export cannot write the state and is answered
        # UNAVAILABLE (the collector would keep and resend it); the critical alert fires.
        filler = state_dir / "filler"
        with filler.open("wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(grpc.RpcError) as err:
            serve.export("nginx_access", *access_lines(300))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        alert = wait_firing(prometheus, "AuditStateWriteFailing", serve)
        assert alert["labels"]["severity"] == "critical"
        assert float(alert["value"]) >= 1

        # Space freed: the resend goes through without a restart, and its spans are in Jaeger.
        filler.unlink()
        serve.export("nginx_access", *access_lines(300))
        spans = JaegerClient(ports.query_url).wait_for_spans(
            lambda s: s["process"].get("serviceName") == "nginx", 30,
            trace_id=request_id(299))
        assert [s["traceID"] for s in spans] == [request_id(299)]
    finally:
        prometheus.proc.stop()
        serve.proc.stop()
        jaeger.stop()
