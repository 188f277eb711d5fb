"""Request-level reconciliation (Nginx ⇄ app): missing, late, restart, bounds.

The reconciler is driven with explicit times; the service test runs the real gRPC server with
a recording trace backend (a test double for Jaeger/the collector) and the real SQLite file.
"""

from __future__ import annotations

import gc
import secrets
import tracemalloc
from pathlib import Path

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from audit_guard import flags
from audit_guard.completeness import Completeness, CompletenessState
from audit_guard.config import load_settings
from audit_guard.correlate.reconcile import (
    RequestReconciler,
    expectations,
    expected_app_records,
    missing_span_id,
)
from audit_guard.otlp.exporter import SpanExporter
from audit_guard.otlp.server import OtlpServer
from audit_guard.pipeline import Pipeline
from audit_guard.telemetry import Telemetry
from demo.procs import free_port
from tests.support.otlp_doubles import logs_request

S = 1_000_000_000
T0 = 1_764_165_600 * S


def nginx_line(rid: str, path: str = "/v1/chat-messages", upstream_status: str = "200",
               received: str = "512") -> str:
    return orjson.dumps({
        "msec": "1764165600.500", "request_id": rid, "connection": 7,
        "request_method": "POST", "request_uri": path, "uri": path, "status": "200",
        "server_name": "dify.example", "host": "dify.example",
        "upstream_status": upstream_status, "upstream_bytes_received": received,
        "user_id": "u1", "app_id": "a1", "request_time": 0.01,
    }).decode()


def app_line(rid: str, path: str = "/v1/chat-messages") -> str:
    """A line as the demo upstream (Dify's request logging) writes it."""
    return orjson.dumps({
        "message": f"POST {path} 200 3.1 {rid}", "trace_id": rid,
        "span_id": secrets.token_hex(8),
        "identity": {"user_id": "u1"},
        "attributes": {"app_id": "a1", "path": path, "method": "POST", "status": 200},
    }).decode()


def logs(source: str, *bodies: str) -> logs_service_pb2.ExportLogsServiceRequest:
    return logs_request(*bodies, source=source)


def rid() -> str:
    return secrets.token_hex(16)


def found(pipeline: Pipeline, source: str, *bodies: str):
    """What one handed-on Export would give the reconciler: (expected, app trace ids)."""
    from audit_guard.telemetry import BatchStats

    stats = BatchStats()
    if pipeline.reconciler is None:  # the pipeline collects expectations once armed
        pipeline.reconciler = reconciler()
        pipeline.reconciler.armed = True
    pipeline.process_logs(logs(source, *bodies), T0, stats)
    return stats.expected, stats.app_seen


def reconciler(tmp_path: Path | None = None, **kw) -> RequestReconciler:
    args = {"window_s": 30, "late_horizon_s": 3600, "max_pending": 10_000,
            "state_file": tmp_path / "r.sqlite" if tmp_path else None, **kw}
    return RequestReconciler(**args)


def arm(r: RequestReconciler, pipeline: Pipeline, now: int = T0) -> None:
    r.commit([], found(pipeline, "app", app_line(rid()))[1], now)


# -- which requests expect an app record ---------------------------------------------------
def test_expected_only_for_audited_proxied_requests(pipeline) -> None:
    lines = [
        nginx_line(rid()),  # expected
        nginx_line(rid(), path="/static/logo.png"),  # not an audited path
        nginx_line(rid(), upstream_status=""),  # nginx answered itself
        nginx_line(rid(), upstream_status="502", received="0"),  # the app never answered
        nginx_line(rid(), upstream_status="502, 200", received="0, 77"),  # retried, answered
        orjson.dumps({"msec": "1764165600.5", "request_method": "GET", "uri": "/v1/x",
                      "status": "200"}).decode(),  # no request id: nothing to join on
    ]
    batch = pipeline.check(pipeline.parse("nginx", lines))
    rows = expected_app_records(batch, pipeline._audited)
    assert rows == [0, 4]
    (trace_id, _), _ = expectations(batch, rows)
    assert trace_id == batch.trace_id[0]


# -- the state machine --------------------------------------------------------------------
def test_app_record_in_time_resolves(pipeline) -> None:
    r = reconciler()
    arm(r, pipeline)
    request = rid()
    r.commit(found(pipeline, "nginx", nginx_line(request))[0], [], T0)
    result = r.commit([], found(pipeline, "app", app_line(request))[1], T0 + 5 * S)
    assert result.matched == 1
    assert r.due(T0 + 31 * S) == []
    assert r.completeness(T0 + 31 * S, 300 * S) == 1.0


def test_no_app_record_is_due_after_the_window_then_late_once(pipeline) -> None:
    r = reconciler()
    arm(r, pipeline)
    request = rid()
    expected, _ = found(pipeline, "nginx", nginx_line(request))
    r.commit(expected, [], T0)
    assert r.due(T0 + 29 * S) == []
    (due,) = r.due(T0 + 30 * S)
    assert due.trace_id.hex() == request and due.method == "POST"
    assert due.path == "/v1/chat-messages" and due.parent_span_id == bytes.fromhex(request[:16])
    # Not declared yet (e.g. downstream down): still due next time, never twice declared.
    assert [d.trace_id for d in r.due(T0 + 31 * S)] == [due.trace_id]
    assert r.declare_missing([due.trace_id], T0 + 31 * S) == 1
    assert r.declare_missing([due.trace_id], T0 + 32 * S) == 0
    assert r.due(T0 + 40 * S) == []
    assert r.completeness(T0 + 40 * S, 300 * S) == 0.0
    # The app record comes after all: late, once — a retried Export does not count it again.
    seen = found(pipeline, "app", app_line(request))[1]
    assert r.is_missing(due.trace_id)
    assert r.commit([], seen, T0 + 50 * S).late == 1
    assert r.commit([], seen, T0 + 51 * S).late == 0
    # The same app record resent within a window is flagged late_record again (a retried
    # Export gives the same spans); after that window the tombstone is forgotten.
    assert r.is_missing(due.trace_id)
    assert r.due(T0 + 81 * S) == []
    assert not r.is_missing(due.trace_id)


def test_app_record_first_then_nginx(pipeline) -> None:
    r = reconciler()
    request = rid()
    r.commit([], found(pipeline, "app", app_line(request))[1], T0)
    assert r.commit(found(pipeline, "nginx", nginx_line(request))[0], [], T0 + S).matched == 1
    assert r.due(T0 + 100 * S) == []


def test_retried_nginx_batch_does_not_reopen_a_matched_request(pipeline) -> None:
    r = reconciler()
    arm(r, pipeline)
    request = rid()
    expected = found(pipeline, "nginx", nginx_line(request))[0]
    r.commit(expected, [], T0)
    r.commit([], found(pipeline, "app", app_line(request))[1], T0 + S)
    r.commit(expected, [], T0 + 2 * S)  # the collector sent the same batch again
    assert r.due(T0 + 60 * S) == []


def test_not_armed_until_an_app_record_was_seen(pipeline) -> None:
    """A deployment that ships no app audit log must not get every request reported."""
    r = reconciler()
    r.commit(found(pipeline, "nginx", nginx_line(rid()))[0], [], T0)
    assert r.due(T0 + 60 * S) == [] and len(r) == 0
    arm(r, pipeline, T0 + 61 * S)
    r.commit(found(pipeline, "nginx", nginx_line(rid()))[0], [], T0 + 62 * S)
    assert len(r.due(T0 + 92 * S)) == 1


def test_late_app_record_is_flagged_in_its_span(pipeline) -> None:
    r = reconciler()
    arm(r, pipeline)
    pipeline.reconciler = r
    request = rid()
    r.commit(found(pipeline, "nginx", nginx_line(request))[0], [], T0)
    (due,) = r.due(T0 + 31 * S)
    r.declare_missing([due.trace_id], T0 + 31 * S)
    batch = pipeline.records_from_logs(logs("app", app_line(request)))[0]
    stats_flags = flags.LATE_RECORD
    from audit_guard.telemetry import BatchStats

    stats = BatchStats()
    pipeline.process_logs(logs("app", app_line(request)), T0 + 40 * S, stats)
    assert stats.flagged and stats_flags in stats.flagged[0].records()[0]["flags"]
    assert batch.trace_id[0] == due.trace_id


# -- persistence --------------------------------------------------------------------------
def test_restart_neither_forgets_nor_invents(pipeline, tmp_path) -> None:
    r = reconciler(tmp_path)
    r.restore(T0)
    arm(r, pipeline)
    waiting, matched, reported = rid(), rid(), rid()
    r.commit(found(pipeline, "nginx", nginx_line(waiting), nginx_line(matched),
                   nginx_line(reported))[0], [], T0)
    r.commit([], found(pipeline, "app", app_line(matched))[1], T0 + S)
    r.declare_missing([d.trace_id for d in r.due(T0 + 30 * S)
                       if d.trace_id.hex() == reported], T0 + 30 * S)
    # A crash: no close(), no checkpoint since start-up — only the journal has it all.
    again = reconciler(tmp_path)
    assert again.restore(T0 + 100 * S) == 4  # the arming record, 3 requests
    assert again.armed
    # The one still waiting gets a fresh window (its app record may be queued upstream) …
    assert again.due(T0 + 129 * S) == []
    assert [d.trace_id.hex() for d in again.due(T0 + 130 * S)] == [waiting]
    # … the matched one is not invented, the reported one is still known for a late record.
    assert again.is_missing(bytes.fromhex(reported))
    assert again.commit([], [bytes.fromhex(reported)], T0 + 131 * S).late == 1
    # A clean stop checkpoints; the next start reads the snapshot: the waiting request and the
    # late one's tombstone (the expired tombstones were forgotten by due()).
    again.close(T0 + 140 * S)
    third = reconciler(tmp_path)
    assert third.restore(T0 + 150 * S) == 2 and third.armed
    assert [d.trace_id.hex() for d in third.due(T0 + 180 * S)] == [waiting]


# -- bounds -------------------------------------------------------------------------------
def test_bounded_with_evictions_counted(pipeline) -> None:
    r = reconciler(max_pending=100)
    arm(r, pipeline)
    lines = [nginx_line(rid()) for _ in range(150)]
    result = r.commit(found(pipeline, "nginx", *lines)[0], [], T0)
    assert len(r) == 100
    assert result.evicted == 50  # 51 over: the arming tombstone first, then 50 pending
    assert r.evicted_total == 50


def test_memory_per_pending_request_at_most_300_bytes(pipeline) -> None:
    r = reconciler(max_pending=100_000)
    arm(r, pipeline)
    # Dify-like paths, with ids in them (the worst case is cut at MAX_PATH_BYTES).
    batches = [
        found(pipeline, "nginx", *[
            nginx_line(rid(), path=f"/v1/datasets/{secrets.token_hex(16)}/documents/"
                                    f"{secrets.token_hex(16)}/segments")
            for _ in range(1000)])[0]
        for _ in range(20)
    ]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for expected in batches:
        r.commit(expected, [], T0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del batches
    per_request = (after - before) / 20_000
    assert r.pending() == 20_000
    assert per_request <= 300, f"{per_request:.0f} bytes per pending request"


# -- in the service -----------------------------------------------------------------------
@pytest.fixture
def service(downstream, tmp_path):
    port = free_port()
    settings = load_settings(
        server={"listen": f"127.0.0.1:{port}"},
        exporter={"endpoint": f"127.0.0.1:{downstream.port}", "max_wait_s": 1.5,
                  "retry_initial_backoff_s": 0.1},
        reconcile={"window_s": 2, "state_dir": str(tmp_path)},
    )
    state = CompletenessState(settings.reconcile)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    telemetry = Telemetry()
    server = OtlpServer(settings.server, pipeline, SpanExporter(settings.exporter), telemetry)
    server.completeness = Completeness(settings.reconcile, state, pipeline, server.exporter,
                                       telemetry, lock=server.pipeline_lock)
    server.completeness.start()
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, logs_service_pb2_grpc.LogsServiceStub(channel)
    channel.close()
    server.stop()
    server.completeness.stop()


def test_service_sends_a_missing_record_span_in_the_request_trace(service, downstream) -> None:
    import time

    server, stub = service
    answered, dropped = rid(), rid()
    stub.Export(logs("app", app_line(answered)), timeout=10)
    stub.Export(logs("nginx", nginx_line(answered), nginx_line(dropped)), timeout=10)
    before = len(downstream.spans())
    server.completeness.tick(time.time_ns() + 3 * S)
    spans = downstream.spans()[before:]
    assert len(spans) == 1
    span = spans[0]
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert span.trace_id.hex() == dropped
    assert span.parent_span_id.hex() == dropped[:16]  # the Nginx span of the request
    assert span.span_id == missing_span_id(span.trace_id)
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert attrs["audit.missing"].bool_value is True
    assert [v.string_value for v in attrs["audit.flags"].array_value.values] == [
        flags.MISSING_RECORD]
    t = server.telemetry
    assert t.snapshot()["audit_records_missing_total"] == 1
    assert t.gauge("audit_log_completeness_ratio", source="app", host="*") == 0.5
    # The app record comes late: counted once, and its span says so.
    stub.Export(logs("app", app_line(dropped)), timeout=10)
    stub.Export(logs("app", app_line(dropped)), timeout=10)
    assert t.snapshot()["audit_records_late_total"] == 1
    late = downstream.spans()[-2]
    late_flags = {kv.key: kv.value for kv in late.attributes}["audit.flags"]
    assert flags.LATE_RECORD in [v.string_value for v in late_flags.array_value.values]


def test_the_first_app_records_arm_the_request_they_come_in(pipeline) -> None:
    """At start-up the collector often sends the first app and Nginx records in one Export:
    its Nginx requests are tracked too."""
    from audit_guard.telemetry import BatchStats

    pipeline.reconciler = reconciler()
    request = logs("app", app_line(rid()))
    request.resource_logs.extend(logs("nginx", nginx_line(rid())).resource_logs)
    stats = BatchStats()
    pipeline.process_logs(request, T0, stats)
    assert len(stats.expected) == 1 and len(stats.app_seen) == 1
    alone = BatchStats()
    pipeline.process_logs(logs("nginx", nginx_line(rid())), T0, alone)
    assert len(alone.expected) == 1  # collected; the reconciler decides whether to track it
    assert not pipeline.reconciler.armed and len(pipeline.reconciler) == 0  # nothing committed


def test_nginx_records_that_come_before_the_first_app_record_are_tracked(pipeline) -> None:
    """The collector reads each file on its own: at start-up the Nginx file's first Exports may
    come before the app's. Those of the last window are held and tracked once armed — matched
    when their app record comes, reported when it does not; older ones are dropped."""
    r = reconciler()
    stale, matched, missing = rid(), rid(), rid()
    r.commit(found(pipeline, "nginx", nginx_line(stale))[0], [], T0)
    r.commit(found(pipeline, "nginx", nginx_line(matched), nginx_line(missing))[0], [],
             T0 + 20 * S)
    assert len(r) == 0 and not r.armed
    r.commit([], found(pipeline, "app", app_line(matched))[1], T0 + 41 * S)
    assert r.armed and len(r) == 2  # matched (a tombstone) and missing; stale was too old
    due = r.due(T0 + 80 * S)
    assert [d.trace_id.hex() for d in due] == [missing]


def test_an_app_log_switched_on_later_is_not_blamed_for_the_requests_before_it(pipeline
                                                                                ) -> None:
    """Holding lasts one window after the first Nginx request: an app audit log that starts
    an hour later arms the reconciler for what comes after it, not for the requests before
    (they had no app record to expect) — and until then Nginx records cost nothing."""
    r = reconciler()
    assert r.holding(T0)
    r.commit(found(pipeline, "nginx", nginx_line(rid()))[0], [], T0)
    assert r.holding(T0 + 30 * S) and not r.holding(T0 + 31 * S)
    before = rid()
    r.commit(found(pipeline, "nginx", nginx_line(before))[0], [], T0 + 3600 * S)
    r.commit([], found(pipeline, "app", app_line(rid()))[1], T0 + 3601 * S)
    assert r.armed and r.holding(T0 + 3602 * S)
    assert r.due(T0 + 4000 * S) == []  # `before` is not reported missing
    after = rid()
    r.commit(found(pipeline, "nginx", nginx_line(after))[0], [], T0 + 3602 * S)
    assert [d.trace_id.hex() for d in r.due(T0 + 4000 * S)] == [after]


def test_held_nginx_records_are_bounded(pipeline) -> None:
    r = reconciler(max_pending=3)
    for i in range(10):
        r.commit(found(pipeline, "nginx", nginx_line(rid()))[0], [], T0 + i)
    assert r._unarmed_count <= 4  # one over the bound at most, dropped at the next commit


def test_killed_service_still_reports_after_restart(downstream, tmp_path) -> None:
    """SIGKILL right after the Export was acknowledged (no clean stop, no checkpoint): the
    restarted `audit-guard serve` still reports the request as missing, and only it — the
    request whose app record came is not invented."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from demo.procs import port_open, wait_until

    port = free_port()
    env = {**os.environ, "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{port}",
           "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
           "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}",
           "AUDIT_GUARD_RECONCILE__WINDOW_S": "2",
           "AUDIT_GUARD_RECONCILE__STATE_DIR": str(tmp_path)}

    def serve() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "audit_guard.cli", "serve"], env=env,
                                stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(port), 30, "audit-guard serve to listen")
        return proc

    answered, dropped = rid(), rid()
    first = serve()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        stub.Export(logs("app", app_line(answered)), timeout=10)
        stub.Export(logs("nginx", nginx_line(answered), nginx_line(dropped)), timeout=10)
        channel.close()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not [s for s in downstream.spans() if s.span_id == missing_span_id(s.trace_id)]
    second = serve()
    try:
        # A fresh window after the restart (2 s), then the ticker reports it.
        wait_until(lambda: any(s.span_id == missing_span_id(s.trace_id)
                               for s in downstream.spans()), 30, "the missing_record span")
        time.sleep(3)  # long enough for a wrongly invented second one to show up
        missing = [s for s in downstream.spans() if s.span_id == missing_span_id(s.trace_id)]
        assert [s.trace_id.hex() for s in missing] == [dropped]
    finally:
        second.terminate()
        second.wait(30)
