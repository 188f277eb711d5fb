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
