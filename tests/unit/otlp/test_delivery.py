"""The delivery rules, proved through the real `audit-guard serve` (a subprocess) and a real gRPC
backend on loopback:

- a resent Export gives byte-identical spans, whatever failed in between (downstream, state disk);
- error-log events waiting for their access record survive kill -9 and SIGTERM;
- the state disk full answers UNAVAILABLE (retried by the collector) and recovers by itself;
- an unreadable state file is moved aside and the service starts;
- a record the pipeline fails on becomes a flagged span, never a failed batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from audit_guard.serve import build_service
from demo.procs import free_port, port_open, wait_until
from tests.support.otlp_doubles import RecordingDownstream, logs_request, span_attributes
from tests.unit.correlate.test_error_join import ACCESS, ERROR

OTHER = ACCESS.replace("4bf92f3577b34da6a3ce929d0e0e4736", "5bf92f3577b34da6a3ce929d0e0e4736"
                       ).replace('"connection":7', '"connection":8')


class Serve:
    """`audit-guard serve` as a subprocess, restartable on the same state dir."""

    def __init__(self, downstream: RecordingDownstream, state_dir: Path) -> None:
        self.port, self.admin = free_port(), free_port()
        self.env = {**os.environ, "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{self.port}",
                    "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{self.admin}",
                    "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}",
                    "AUDIT_GUARD_EXPORTER__MAX_WAIT_S": "1.5",
                    "AUDIT_GUARD_RECONCILE__STATE_DIR": str(state_dir)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / "serve.log"

    def start(self) -> Serve:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "audit_guard.cli", "serve"],
                                         env=self.env, stderr=out)
        wait_until(lambda: port_open(self.port), 30, "audit-guard serve to listen")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def export(self, source: str, *bodies: str) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)
            stub.Export(logs_request(*bodies, source=source), timeout=15)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))


@pytest.fixture
def serve(downstream: RecordingDownstream, tmp_path: Path) -> Iterator[Serve]:
    s = Serve(downstream, tmp_path / "state")
    yield s
    s.stop(signal.SIGKILL)


def flags_of(downstream: RecordingDownstream) -> list[list[str]]:
    return [span_attributes(s).get("audit.flags", []) for s in downstream.spans()]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_waiting_error_log_events_survive_a_restart(serve, downstream, sig) -> None:
    serve.start()
    serve.export("nginx_error", ERROR)  # acknowledged: its access record has not come yet
    serve.stop(sig)
    serve.start()
    serve.export("nginx_access", ACCESS)
    assert flags_of(downstream) == [["truncated:upstream_closed"]]


def test_the_saved_state_is_restored_before_the_first_call_is_taken(downstream, tmp_path
                                                                    ) -> None:
    """A restarted service takes no Export before its waiting error-log events are back: one
    taken in between would miss its join (the collector sends as soon as the port opens; the
    restart test above caught it once, the receiver listening 4 ms before the restore)."""
    settings = load_settings(server={"listen": f"127.0.0.1:{free_port()}"},
                             admin={"listen": f"127.0.0.1:{free_port()}"},
                             exporter={"endpoint": f"127.0.0.1:{downstream.port}"},
                             reconcile={"state_dir": str(tmp_path / "state")})
    first = build_service(settings)
    first.start()
    try:
        with grpc.insecure_channel(settings.server.listen) as channel:
            logs_service_pb2_grpc.LogsServiceStub(channel).Export(
                logs_request(ERROR, source="nginx_error"), timeout=15)
    finally:
        first.stop()
        first.wait()
    second = build_service(settings)
    waiting_at_listen: list[int] = []
    listen = second.server.start

    def start() -> int:
        waiting_at_listen.append(len(orjson.loads(second.pipeline.errors.dump())))
        return listen()

    second.server.start = start  # type: ignore[method-assign]
    second.start()
    try:
        assert waiting_at_listen == [1]
    finally:
        second.stop()
        second.wait()


def test_a_failed_hand_off_changes_nothing(serve, downstream) -> None:
    """The access record joins the waiting error event; downstream refuses (retryable), so the
    join is undone and the resent Export joins it again: the same span, flagged."""
    serve.start()
    serve.export("nginx_error", ERROR)
    downstream.fail_with = grpc.StatusCode.INTERNAL
    with pytest.raises(grpc.RpcError) as err:
        serve.export("nginx_access", ACCESS, OTHER)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    downstream.fail_with = None
    serve.export("nginx_access", ACCESS, OTHER)
    first = [s.SerializeToString() for s in downstream.spans()]
    assert flags_of(downstream) == [["truncated:upstream_closed"], []]
    # Handed on, then the acknowledgement was lost: the collector resends. Same bytes.
    serve.export("nginx_access", ACCESS, OTHER)
    assert [s.SerializeToString() for s in downstream.spans()] == first * 2


def test_state_disk_full_answers_unavailable_then_recovers(downstream, tmp_path) -> None:
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    serve = Serve(downstream, mount)
    try:
        serve.start()
        serve.export("app", '{"request_id": "' + "a" * 32 + '", "user_id": "u"}')  # arms
        filler = mount / "filler"
        with filler.open("wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        with pytest.raises(grpc.RpcError) as err:
            serve.export("nginx_access", ACCESS,
                         *[OTHER.replace("5bf9", f"{i:04x}") for i in range(300)])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "state not saved" in err.value.details()
        assert serve.metric("audit_state_write_errors_total") >= 1
        filler.unlink()
        serve.export("nginx_access", ACCESS,
                     *[OTHER.replace("5bf9", f"{i:04x}") for i in range(300)])
        nginx = [s for s in downstream.spans() if span_attributes(s)["audit.source"] == "nginx"]
        # Both tries were handed on (the state write fails after the hand-off): the same
        # 301 spans twice, none flagged duplicate.
        assert len(nginx) == 602 and len({s.SerializeToString() for s in nginx}) == 301
        assert not any("duplicate" in span_attributes(s).get("audit.flags", []) for s in nginx)
    finally:
        serve.stop(signal.SIGKILL)
        subprocess.run(["umount", str(mount)], check=False)


def test_an_unreadable_state_file_is_moved_aside(serve, downstream, tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "reconcile.sqlite").write_bytes(b"not a database, a disk error " * 100)
    serve.start()
    assert serve.metric("audit_state_corrupt_total") == 1
    moved = [p.name for p in state.iterdir() if ".corrupt-" in p.name]
    assert len(moved) == 1 and moved[0].startswith("reconcile.sqlite.corrupt-")
    serve.export("nginx_access", ACCESS)
    assert len(downstream.spans()) == 1
    assert "moved aside" in serve.log.read_text()


def test_a_record_the_pipeline_fails_on_is_flagged_not_a_failed_batch(monkeypatch) -> None:
    """The last-resort net, with a fault injected into span building for one record: the rest
    of the chunk is exported as usual, that record as an invalid_field:record span with its
    raw text."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    pipeline = Pipeline(load_settings())
    real = pipeline.span_builder.spans

    def fails_on_other(batch, now_ns):
        if "5bf92f3577b34da6a3ce929d0e0e4736" in [t.hex() for t in batch.trace_id]:
            raise OverflowError("injected fault")
        return real(batch, now_ns)

    monkeypatch.setattr(pipeline.span_builder, "spans", fails_on_other)
    payload, count = pipeline.process_logs(logs_request(ACCESS, OTHER, ACCESS), now_ns=1)
    spans = [s for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert count == 3 and len(spans) == 3
    assert [span_attributes(s).get("audit.flags", []) for s in spans] == [
        [], ["invalid_field:record"], ["duplicate"]]
    assert span_attributes(spans[1])["audit.raw"] == OTHER
    assert spans[1].name == "unprocessable nginx record"
