"""The OTLP service: ack rule, backpressure, health, config errors, SIGTERM.

The downstream is a real gRPC TraceService server on loopback (a recording test double for
Jaeger/the collector, named as such); the end-to-end tests use the real programs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.otlp.exporter import SpanExporter
from audit_guard.otlp.server import OtlpServer
from audit_guard.pipeline import Pipeline
from audit_guard.telemetry import Telemetry
from demo.procs import free_port, port_open, wait_until
from tests.support.otlp_doubles import logs_request

LINE = orjson.dumps(
    {"msec": "1764165600.5", "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
     "request_method": "GET", "uri": "/v1/parameters", "status": "200",
     "user_id": "u1", "app_id": "a1"}
).decode()


@pytest.fixture
def service(downstream):
    port = free_port()
    settings = load_settings(
        server={"listen": f"127.0.0.1:{port}", "max_inflight_requests": 1},
        exporter={"endpoint": f"127.0.0.1:{downstream.port}", "max_wait_s": 1.5,
                  "retry_initial_backoff_s": 0.1},
    )
    server = OtlpServer(settings.server, Pipeline(settings), SpanExporter(settings.exporter),
                        Telemetry())
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, logs_service_pb2_grpc.LogsServiceStub(channel), channel
    channel.close()
    server.stop()


def test_ok_only_after_downstream_accepted(service, downstream) -> None:
    server, stub, _ = service
    stub.Export(logs_request(LINE, "garbage"), timeout=10)
    spans = downstream.spans()
    assert len(spans) == 2  # the malformed line is exported flagged, not dropped
    assert spans[0].trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    counters = server.telemetry.snapshot()
    assert counters["audit_records_total"] == 2
    assert counters["audit_spans_exported_total"] == 2


def test_unavailable_downstream_gives_unavailable(service, downstream) -> None:
    server, stub, _ = service
    downstream.fail_with = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(logs_request(LINE), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.telemetry.snapshot()["audit_spans_exported_total"] == 0
    # the collector retries; once downstream is back the same data goes through
    downstream.fail_with = None
    stub.Export(logs_request(LINE), timeout=10)
    assert len(downstream.spans()) == 1


def _spans_bytes(downstream) -> list[bytes]:
    return [s.SerializeToString() for s in downstream.spans()]


def test_permanent_rejection_without_a_spool_is_never_acknowledged(service, downstream) -> None:
    """No dead-letter spool: a permanent code is answered UNAVAILABLE (the collector keeps the
    data), never acknowledged and dropped; the resend, once downstream accepts, is the same."""
    server, stub, _ = service
    downstream.fail_with = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(logs_request(LINE, LINE), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "refused 2 span(s) for good" in err.value.details()
    assert server.telemetry.snapshot()["audit_records_total"] == 0  # not counted: not handed on
    downstream.fail_with = None
    stub.Export(logs_request(LINE, LINE), timeout=10)
    flags = [[v.string_value for a in s.attributes if a.key == "audit.flags"
              for v in a.value.array_value.values] for s in downstream.spans()]
    assert flags == [[], ["duplicate"]]  # the line written twice; nothing from the failed try


@pytest.mark.parametrize("code", [
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN,
])
def test_every_other_code_is_retried_then_unavailable(service, downstream, code) -> None:
    server, stub, _ = service
    downstream.fail_with = code
    other = LINE.replace("4bf92f3577b34da6a3ce929d0e0e4736", "5bf92f3577b34da6a3ce929d0e0e4736")
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(logs_request(LINE, other), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.telemetry.snapshot()["audit_export_unavailable_total"] == 1
    downstream.fail_with = None
    stub.Export(logs_request(LINE, other), timeout=10)
    first = _spans_bytes(downstream)
    stub.Export(logs_request(LINE, other), timeout=10)  # a resend after an ack that got lost
    assert _spans_bytes(downstream) == first * 2  # identical spans, none flagged duplicate
    assert "audit.flags" not in str(downstream.spans())


def test_permanent_rejection_and_partial_success_go_to_the_spool(downstream, tmp_path) -> None:
    from audit_guard.otlp.spool import DeadLetterSpool

    port = free_port()
    settings = load_settings(
        server={"listen": f"127.0.0.1:{port}"},
        exporter={"endpoint": f"127.0.0.1:{downstream.port}", "max_wait_s": 1.5},
    )
    spool = DeadLetterSpool(tmp_path / "deadletter", 1 << 20)
    server = OtlpServer(settings.server, Pipeline(settings),
                        SpanExporter(settings.exporter, spool=spool), Telemetry())
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)
            downstream.fail_with = grpc.StatusCode.INVALID_ARGUMENT
            stub.Export(logs_request(LINE, LINE), timeout=10)  # acked: kept in the spool
            downstream.fail_with = None
            downstream.reject = 1
            stub.Export(logs_request(LINE.replace("u1", "u2")), timeout=10)
    finally:
        server.stop()
    snap = server.telemetry.snapshot()
    assert snap["audit_spans_deadlettered_total"] == 3
    assert snap["audit_spans_exported_total"] == 0
    entries = spool.entries()
    assert [(e.spans, e.reason) for e in entries] == [(2, "invalid_argument"),
                                                       (1, "partial_success")]
    spooled = ExportTraceServiceRequest.FromString(spool.read(entries[0]))
    assert len(spooled.resource_spans[0].scope_spans[0].spans) == 2


def test_big_requests_are_split_under_the_size_limit(downstream) -> None:
    port = free_port()
    settings = load_settings(
        server={"listen": f"127.0.0.1:{port}"},
        exporter={"endpoint": f"127.0.0.1:{downstream.port}", "max_request_bytes": 65536},
    )
    server = OtlpServer(settings.server, Pipeline(settings), SpanExporter(settings.exporter),
                        Telemetry())
    server.start()
    lines = [LINE.replace("4bf92f3577b34da6a3ce929d0e0e4736", f"{i + 1:032x}")
                 .replace('"u1"', '"' + "u" * 300 + '"') for i in range(2000)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs_request(*lines),
                                                                  timeout=30)
    finally:
        server.stop()
    sizes = [r.ByteSize() for r in downstream.requests]
    assert len(sizes) > 10 and max(sizes) <= 65536
    ids = [s.trace_id.hex() for s in downstream.spans()]
    assert ids == [f"{i + 1:032x}" for i in range(2000)]  # all of them, in order, once
    assert server.telemetry.snapshot()["audit_spans_exported_total"] == 2000


def test_inflight_limit_answers_unavailable(service, downstream) -> None:
    server, stub, _ = service
    downstream.delay = 2.5  # the first call holds the only slot while downstream is slow

    def hold_slot() -> None:
        with contextlib.suppress(grpc.RpcError):  # it times out downstream: not the point here
            stub.Export(logs_request(LINE), timeout=10)

    first = threading.Thread(target=hold_slot)
    first.start()
    time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(logs_request(LINE), timeout=10)
    first.join()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.telemetry.snapshot()["audit_export_backpressure_total"] == 1


def test_health_service(service) -> None:
    _, _, channel = service
    health = health_pb2_grpc.HealthStub(channel)
    resp = health.Check(health_pb2.HealthCheckRequest(
        service="opentelemetry.proto.collector.logs.v1.LogsService"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_large_messages_accepted(service, downstream) -> None:
    _, stub, _ = service
    big = orjson.dumps({"uri": "/x", "pad": "x" * (8 * 1024 * 1024)}).decode()
    stub.Export(logs_request(big), timeout=20)  # above grpc's 4 MiB default
    assert len(downstream.spans()) == 1


def _serve(env: dict[str, str], *args: str) -> subprocess.Popen:
    env = {"AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "audit_guard.cli", "serve", *args],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_bad_config_fails_fast_with_key_and_reason(tmp_path) -> None:
    proc = _serve({"AUDIT_GUARD_EXPORTER__TIMEOUT_S": "-3"})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "exporter.timeout_s" in err and "greater than 0" in err

    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  listen: 127.0.0.1:4327\n  max_inflight: 3\n")
    proc = _serve({}, "--config", str(cfg))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "server.max_inflight" in err and "not permitted" in err


def test_sigterm_finishes_in_flight_then_exits(downstream) -> None:
    port = free_port()
    proc = _serve({"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{port}",
                   "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}"})
    try:
        wait_until(lambda: port_open(port), 30, "audit-guard serve to listen")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        downstream.fail_with = grpc.StatusCode.UNAVAILABLE  # keep one Export in flight
        result: dict[str, object] = {}

        def call() -> None:
            try:
                stub.Export(logs_request(LINE), timeout=20)
                result["ok"] = True
            except grpc.RpcError as exc:
                result["code"] = exc.code()

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        downstream.fail_with = None  # downstream recovers during the grace period
        t.join(30)
        assert result == {"ok": True}  # the in-flight batch was finished, not abandoned
        assert proc.wait(30) == 0
        assert len(downstream.spans()) == 1
        channel.close()
    finally:
        proc.kill()
        proc.wait()


def test_metrics_endpoint_counts_what_was_handed_on(downstream) -> None:
    port, admin = free_port(), free_port()
    proc = _serve({"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{port}",
                   "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{admin}",
                   "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}"})
    try:
        wait_until(lambda: port_open(port), 30, "audit-guard serve to listen")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        cut = LINE.replace('"status"', '"request_completion":"","status"')
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(
            logs_request(LINE, cut, "garbage"), timeout=10)
        channel.close()
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read()
        samples = {}
        for line in text.decode().splitlines():
            if line.startswith("audit_") and "{" in line:
                name, rest = line.split("{", 1)
                labels = dict(kv.split("=", 1) for kv in rest.rsplit("}", 1)[0].split(","))
                labels = {k: v.strip('"') for k, v in labels.items() if not k.startswith("otel")}
                samples[(name, tuple(sorted(labels.items())))] = float(line.rsplit(" ", 1)[1])
        assert samples[("audit_records_total", (("source", "nginx"),))] == 3
        assert samples[("audit_records_truncated_total",
                        (("reason", "request_incomplete"), ("source", "nginx")))] == 1
        assert samples[("audit_records_malformed_total", (("source", "nginx"),))] == 1
        assert samples[("audit_field_violations_total", (("field", "method"),))] == 1
        assert samples[("audit_spans_exported_total", ())] == 3
        assert samples[("audit_export_duration_seconds_count", ())] == 1
    finally:
        proc.terminate()
        proc.wait(30)


def test_rules_reload_on_sighup_and_refuse_a_broken_set(tmp_path, downstream) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("- name: parameters_read\n  when: path == '/v1/parameters'\n"
                     "  severity: info\n")
    port = free_port()
    proc = _serve({"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{port}",
                   "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}",
                   "AUDIT_GUARD_RULES_FILES": f'["{rules}"]',
                   "AUDIT_GUARD_BUILTIN_RULES": "false"})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = logs_service_pb2_grpc.LogsServiceStub(channel)

    def flags_of_next_span() -> list[str]:
        before = len(downstream.spans())
        stub.Export(logs_request(LINE), timeout=10)
        span = downstream.spans()[before]
        attrs = {kv.key: kv.value for kv in span.attributes}
        return [v.string_value for v in attrs["audit.flags"].array_value.values] \
            if "audit.flags" in attrs else []

    try:
        wait_until(lambda: port_open(port), 30, "audit-guard serve to listen")
        assert flags_of_next_span() == ["rule:parameters_read"]
        # a broken set is refused whole; the running set stays
        rules.write_text("- name: parameters_read\n  when: path == == 'x'\n  severity: info\n"
                         "- name: other\n  when: status == `200`\n  severity: low\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(3)
        # (the same line again is also flagged `duplicate`: rule flags are what matters here)
        still = flags_of_next_span()
        assert "rule:parameters_read" in still and "rule:other" not in still
        # a good set replaces it (also picked up by the file watch, without a signal)
        rules.write_text("- name: ok_answers\n  when: status == `200`\n  severity: low\n")
        wait_until(lambda: "rule:ok_answers" in flags_of_next_span(), 15, "the new rule set")
    finally:
        channel.close()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "audit rules NOT reloaded" in err and "position" in err
    assert "audit rules reloaded: 1 rule(s): ok_answers" in err


def test_broken_rules_file_stops_start_up(tmp_path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("- name: bad\n  when: status ==\n  severity: high\n")
    proc = _serve({"AUDIT_GUARD_RULES_FILES": f'["{rules}"]'})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "rule 'bad'" in err and "position" in err
