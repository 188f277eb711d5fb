"""Behind load_balancing a request split over instances is retried whole while one instance is
down: the healthy instance gets its share again (records seen before), and its app records may
wait in the collector's queue behind the retried request. A re-sent Nginx record must not
re-open its request, and while records come again no request is reported missing_record
(reconcile.resend_hold_s); once the hold ends, the truly missing ones are."""

from __future__ import annotations

import time

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from audit_guard.completeness import Completeness, CompletenessState
from audit_guard.config import load_settings
from audit_guard.otlp.exporter import SpanExporter
from audit_guard.otlp.server import OtlpServer
from audit_guard.pipeline import Pipeline
from audit_guard.telemetry import BatchStats, Telemetry
from demo.procs import free_port
from tests.unit.correlate.test_reconcile import S, app_line, logs, nginx_line, rid

HOLD_S = 10


@pytest.fixture
def service(downstream, tmp_path):
    port = free_port()
    settings = load_settings(
        server={"listen": f"127.0.0.1:{port}"},
        exporter={"endpoint": f"127.0.0.1:{downstream.port}", "max_wait_s": 1.5,
                  "retry_initial_backoff_s": 0.1},
        reconcile={"window_s": 2, "state_dir": str(tmp_path), "resend_hold_s": HOLD_S},
    )
    state = CompletenessState(settings.reconcile)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    server = OtlpServer(settings.server, pipeline, SpanExporter(settings.exporter), Telemetry())
    server.completeness = Completeness(settings.reconcile, state, pipeline, server.exporter,
                                       Telemetry(), lock=server.pipeline_lock)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, logs_service_pb2_grpc.LogsServiceStub(channel), pipeline
    channel.close()
    server.stop()


def test_a_resent_nginx_record_expects_nothing_again() -> None:
    settings = load_settings()
    state = CompletenessState(settings.reconcile)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    request = logs("nginx", nginx_line(rid()), nginx_line(rid()))
    first, again = BatchStats(), BatchStats()
    pipeline.process_logs(request, now_ns=time.time_ns(), stats=first)
    pipeline.commit()
    pipeline.process_logs(request, now_ns=time.time_ns(), stats=again)
    assert (len(first.expected), first.resent) == (2, 0)
    assert (len(again.expected), again.resent) == (0, 2)


def test_no_missing_record_while_records_come_again(service, downstream) -> None:
    server, stub, _ = service
    answered, waiting = rid(), rid()
    stub.Export(logs("app", app_line(answered)), timeout=10)  # arms
    share = logs("nginx", nginx_line(answered), nginx_line(waiting))
    stub.Export(share, timeout=10)
    stub.Export(share, timeout=10)  # the collector retries the split request: seen before
    now = time.time_ns()
    before = len(downstream.spans())
    server.completeness.tick(now + 3 * S)  # past the window, within the hold
    assert len(downstream.spans()) == before
    # its app record was queued behind the retried request: it comes, nothing was missing
    stub.Export(logs("app", app_line(waiting)), timeout=10)
    server.completeness.tick(now + (HOLD_S + 1) * S)
    assert not [s for s in downstream.spans()[before:] if s.name.startswith("missing")]


def test_the_truly_missing_are_reported_when_the_hold_ends(service, downstream) -> None:
    server, stub, _ = service
    answered, dropped = rid(), rid()
    stub.Export(logs("app", app_line(answered)), timeout=10)
    share = logs("nginx", nginx_line(answered), nginx_line(dropped))
    stub.Export(share, timeout=10)
    stub.Export(share, timeout=10)
    now = time.time_ns()
    before = len(downstream.spans())
    server.completeness.tick(now + 3 * S)
    assert len(downstream.spans()) == before  # held
    server.completeness.tick(now + (HOLD_S + 1) * S)
    (span,) = downstream.spans()[before:]
    assert span.trace_id.hex() == dropped


def _restarted(settings, state_dir) -> tuple[Completeness, list]:
    """A Completeness started on the saved state, its missing spans collected."""
    settings = load_settings(reconcile={"window_s": 2, "state_dir": str(state_dir),
                                        **settings})
    state = CompletenessState(settings.reconcile)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    sent: list = []

    class Sink:
        def export(self, traces: bytes, count: int):
            sent.append(count)
            return type("Outcome", (), {"accepted": count, "spooled": 0, "reason": ""})()

    completeness = Completeness(settings.reconcile, state, pipeline, Sink(), Telemetry())
    return completeness, sent


@pytest.mark.parametrize("hold_s", [0, HOLD_S])
def test_restart_hold(service, tmp_path, hold_s) -> None:
    """Behind load_balancing an instance that was down comes back to requests whose app records
    are still in the collector's queue: reconcile.restart_hold_s holds their reports (0, the
    default: a fresh window only, as for one instance)."""
    server, stub, _ = service
    stub.Export(logs("app", app_line(rid())), timeout=10)
    stub.Export(logs("nginx", nginx_line(rid())), timeout=10)  # waits for its app record
    server.stop()
    server.completeness.requests.close(time.time_ns())
    completeness, sent = _restarted({"restart_hold_s": hold_s}, tmp_path)
    now = time.time_ns()
    completeness.start(now)  # its own ticker sees real time: within the window for a while
    try:
        completeness.report_missing(now + 3 * S)  # past the fresh window
        assert sent == ([] if hold_s else [1])
        completeness.report_missing(now + (HOLD_S + 3) * S)
        assert sent == [1]
    finally:
        completeness.stop()
