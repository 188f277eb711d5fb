"""Counter-level reconciliation: nginx's request counters against the access-log records.

The comparison logic is driven with explicit readings; the deficit tests read real counters:
a real nginx's stub_status, and the VTS formats served by a test double of nginx-module-vts
(tests/support/vts_double.py — the module cannot be installed here), through the same code path the
service uses (`Completeness.scrape` → `tick`).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from audit_guard.completeness import Completeness, CompletenessState
from audit_guard.config import load_settings
from audit_guard.correlate.counters import CounterReconciler
from audit_guard.pipeline import Pipeline
from audit_guard.sources.nginx_counters import ALL_ZONES
from audit_guard.sources.nginx_counters import CounterSample as Reading
from audit_guard.telemetry import BatchStats, Telemetry
from demo.nginx import nginx_binary, snippet_dir
from demo.procs import ManagedProcess, free_port, http_ok
from tests.support.otlp_doubles import logs_request
from tests.support.vts_double import VtsDouble

S = 1_000_000_000
T0 = 1_764_165_600 * S


def served(host: str, *seconds: float) -> dict[str, list[int]]:
    """Access-log records of `host` at T0 + each second (their $msec)."""
    return {host: [T0 + int(s * S) for s in seconds]}


def test_matching_counts_leave_nothing_missing() -> None:
    c = CounterReconciler(settle_s=5, span_s=300)
    c.add_readings("vts", [Reading("a.example", 100, T0)])
    c.add_records(served("a.example", *range(10)))  # 10 records in [T0, T0+10s)
    c.add_readings("vts", [Reading("a.example", 110, T0 + 10 * S)])
    assert c.evaluate(T0 + 14 * S) == {}  # not settled yet: nothing compared
    assert c.ratios() == {}
    assert c.evaluate(T0 + 15 * S) == {}
    assert c.ratios() == {"a.example": 1.0}
    assert c.traffic_since(T0 - 1) is True
    assert c.traffic_since(T0) is False


def test_records_before_any_reading_are_not_kept() -> None:
    c = CounterReconciler(settle_s=5, span_s=300)
    c.add_records(served("a.example", 1, 2, 3))
    assert c._times == {}


def test_a_lasting_shortfall_is_counted_once_per_host() -> None:
    c = CounterReconciler(settle_s=5, span_s=300)
    c.add_readings("vts", [Reading("a.example", 0, T0), Reading("b.example", 50, T0)])
    c.add_records(served("a.example", *[1.5] * 90) | served("b.example", 3))
    c.add_readings("vts", [Reading("a.example", 100, T0 + 10 * S),
                           Reading("b.example", 51, T0 + 10 * S)])
    # Counted only when the next interval has not made up for it (a boundary effect would).
    assert c.evaluate(T0 + 20 * S) == {}
    assert c.ratios() == {"a.example": 0.9, "b.example": 1.0}
    c.add_readings("vts", [Reading("a.example", 100, T0 + 20 * S),
                           Reading("b.example", 51, T0 + 20 * S)])
    assert c.evaluate(T0 + 30 * S) == {"a.example": 10}
    c.add_readings("vts", [Reading("a.example", 100, T0 + 30 * S)])
    assert c.evaluate(T0 + 40 * S) == {}  # not counted again


def test_a_request_on_the_boundary_is_not_missing() -> None:
    """Counted by nginx before a reading, logged with a time just after it: one interval
    short, the next one over — nothing missing."""
    c = CounterReconciler(settle_s=1, span_s=300)
    for k, total in enumerate((0, 5, 10, 10)):
        c.add_readings("vts", [Reading("h", total, T0 + k * 10 * S)])
    c.add_records(served("h", 1, 2, 3, 4, 10.001, 12, 13, 14, 15, 16))
    assert c.evaluate(T0 + 40 * S) == {}


def test_counter_reset_counts_from_zero() -> None:
    c = CounterReconciler(settle_s=1, span_s=300)
    c.add_readings("vts", [Reading("h", 1000, T0)])
    c.add_readings("vts", [Reading("h", 4, T0 + 10 * S)])  # went down: restarted, 4 since
    c.add_readings("vts", [Reading("h", 10, T0 + 20 * S, start_time_unix_nano=T0)])
    # A new OTLP start time is a reset even though the count went up: 15 since then, not 5.
    c.add_readings("vts", [Reading("h", 15, T0 + 30 * S, start_time_unix_nano=T0 + 25 * S)])
    c.add_readings("vts", [Reading("h", 15, T0 + 40 * S, start_time_unix_nano=T0 + 25 * S)])
    c.add_records(served("h", *range(5, 9)) | {"x": []})
    c.add_records(served("h", *range(11, 17)))
    c.add_records(served("h", *[29] * 10))  # 10 of the 15 after the second reset
    assert c.evaluate(T0 + 50 * S) == {"h": 5}
    assert c.ratios() == {"h": 20 / 25}


def test_vts_sum_zone_is_not_compared_when_zones_are_reported() -> None:
    """VTS's "*" zone also counts the status server, which does not log."""
    c = CounterReconciler(settle_s=1, span_s=300)
    for k, (h, total) in enumerate(((0, 0), (2, 40), (2, 80))):
        c.add_readings("vts", [Reading("h", h, T0 + k * 10 * S),
                               Reading(ALL_ZONES, total, T0 + k * 10 * S)])
    c.add_records(served("h", 1, 2))
    assert c.evaluate(T0 + 30 * S) == {}
    assert set(c.ratios()) == {"h"}


def test_stub_status_requests_in_flight_are_not_missing_yet() -> None:
    """stub_status counts a request when it starts: a long stream (SSE) in progress at a
    reading is logged in a later interval."""
    c = CounterReconciler(settle_s=1, span_s=300)
    c.add_readings("stub", [Reading(ALL_ZONES, 10, T0, in_flight=1)], self_requests=1)
    # 3 requests done and logged, 2 streams still running, plus our own scrape.
    c.add_records(served("h", 2, 3, 4))
    c.add_readings("stub", [Reading(ALL_ZONES, 16, T0 + 10 * S, in_flight=3)], self_requests=1)
    c.add_records(served("h", 12, 13))  # the streams end and are logged
    c.add_readings("stub", [Reading(ALL_ZONES, 17, T0 + 20 * S, in_flight=1)], self_requests=1)
    c.add_readings("stub", [Reading(ALL_ZONES, 18, T0 + 30 * S, in_flight=1)], self_requests=1)
    assert c.evaluate(T0 + 35 * S) == {}
    assert c.ratios() == {ALL_ZONES: 1.0}


def test_a_series_silent_for_longer_than_the_span_starts_afresh() -> None:
    c = CounterReconciler(settle_s=1, span_s=60)
    c.add_readings("vts", [Reading("h", 0, T0)])
    assert c.evaluate(T0 + 2 * S) == {}
    c.add_readings("vts", [Reading("h", 500, T0 + 600 * S)])  # the endpoint was down 10 min
    c.add_readings("vts", [Reading("h", 500, T0 + 610 * S)])
    c.add_readings("vts", [Reading("h", 500, T0 + 620 * S)])
    assert c.evaluate(T0 + 700 * S) == {}


# -- against real counters ------------------------------------------------------------------
def _conf(workdir: Path, port: int, status_port: int) -> Path:
    log_format = snippet_dir() / "audit_log_format.conf"
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 64; }}
http {{
    include {log_format};
    access_log {workdir}/access.log audit_json;
    client_body_temp_path {workdir}/tmp; proxy_temp_path {workdir}/tmp;
    fastcgi_temp_path {workdir}/tmp; uwsgi_temp_path {workdir}/tmp; scgi_temp_path {workdir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        server_name api.example;
        location /v1/ {{ return 200 "ok\\n"; }}
        # The configuration mistake under test: a location that serves without logging.
        location /v1/export/ {{ access_log off; return 200 "exported\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        access_log off;
        location = /stub_status {{ stub_status; }}
    }}
}}
""")
    (workdir / "tmp").mkdir(exist_ok=True)
    return conf


@pytest.fixture
def nginx(tmp_path):
    port, status_port = free_port(), free_port()
    conf = _conf(tmp_path, port, status_port)
    check = subprocess.run([nginx_binary(), "-t", "-c", str(conf), "-p", f"{tmp_path}/",
                            "-e", str(tmp_path / "error.log")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = ManagedProcess("nginx", [nginx_binary(), "-c", str(conf), "-p", f"{tmp_path}/",
                                    "-e", str(tmp_path / "error.log")], log_dir=tmp_path).start()
    proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{status_port}/stub_status"), timeout=30)
    yield port, status_port, tmp_path / "access.log"
    proc.stop()


def _completeness(tmp_path: Path, targets: list[dict[str, str]]) -> tuple[Completeness, Pipeline]:
    settings = load_settings(reconcile={"counter_targets": targets, "settle_s": 1,
                                        "scrape_interval_s": 1, "state_dir": str(tmp_path)})
    state = CompletenessState(settings.reconcile)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    # No spans are sent in these tests (no app records, so nothing can be missing).
    completeness = Completeness(settings.reconcile, state, pipeline, exporter=None,
                                telemetry=Telemetry())
    return completeness, pipeline


def _hand_on(completeness: Completeness, pipeline: Pipeline, lines: list[str]) -> None:
    stats = BatchStats()
    pipeline.process_logs(logs_request(*lines), time.time_ns(), stats)
    completeness.on_handed_on(stats, time.time_ns())


def test_stub_status_deficit_against_real_nginx(nginx, tmp_path) -> None:
    port, status_port, access_log = nginx
    target = {"url": f"http://127.0.0.1:{status_port}/stub_status", "format": "stub_status"}
    completeness, pipeline = _completeness(tmp_path / "state", [target])
    t = completeness._telemetry
    completeness.tick(time.time_ns())  # first reading
    for i in range(20):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/chat-messages?i={i}").read()
    for i in range(5):  # served, counted by nginx, never logged
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/export/{i}").read()
    time.sleep(1.1)  # the next reading falls in a later second than every record
    completeness._next_scrape = 0
    completeness.tick(time.time_ns())  # second reading
    lines = access_log.read_text().splitlines()
    assert len(lines) == 20
    _hand_on(completeness, pipeline, lines)
    _hand_on(completeness, pipeline, lines)  # resent (its ack was lost): counted once
    completeness.tick(time.time_ns() + 2 * S)  # settled: compared
    completeness._next_scrape = 0
    completeness.tick(time.time_ns())  # a third reading: the shortfall lasts, so it counts
    completeness.tick(time.time_ns() + 2 * S)
    assert t.snapshot()["audit_records_missing_total"] == 5
    assert t.gauge("audit_log_completeness_ratio", source="nginx", host=ALL_ZONES) == 0.8
    # Traffic that is all logged: no new shortfall, the ratio recovers over the span.
    for i in range(10):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/chat-messages?j={i}").read()
    time.sleep(1.1)
    completeness._next_scrape = 0
    completeness.tick(time.time_ns())
    _hand_on(completeness, pipeline, access_log.read_text().splitlines()[20:])
    completeness.tick(time.time_ns() + 2 * S)
    assert t.snapshot()["audit_records_missing_total"] == 5
    assert t.gauge("audit_log_completeness_ratio", source="nginx", host=ALL_ZONES) == 30 / 35


@pytest.mark.parametrize("fmt", ["vts_json", "vts_prometheus"])
def test_vts_deficit_per_server_zone(fmt, tmp_path) -> None:
    """VTS formats (test double of nginx-module-vts): compared per server zone, so a zone
    that logs everything stays at 1.0 while the other one shows its shortfall."""
    with VtsDouble() as vts:
        path = "/status/format/json" if fmt == "vts_json" else "/status/format/prometheus"
        completeness, pipeline = _completeness(
            tmp_path, [{"url": f"http://127.0.0.1:{vts.port}{path}", "format": fmt}])
        t = completeness._telemetry
        vts.set("api.example", 1000)
        vts.set("console.example", 50)
        completeness.tick(time.time_ns())
        now = time.time()
        lines = [orjson.dumps({"msec": f"{now:.3f}", "request_id": f"{i:032x}",
                               "request_method": "GET", "uri": "/v1/x", "status": "200",
                               "server_name": host}).decode()
                 for i, host in enumerate(["api.example"] * 97 + ["console.example"] * 10)]
        vts.set("api.example", 1100)
        vts.set("console.example", 60)
        time.sleep(1.1)
        completeness._next_scrape = 0
        completeness.tick(time.time_ns())
        _hand_on(completeness, pipeline, lines)
        completeness.tick(time.time_ns() + 2 * S)
        completeness._next_scrape = 0
        completeness.tick(time.time_ns())  # a third reading: the shortfall lasts
        completeness.tick(time.time_ns() + 2 * S)
    assert t.snapshot()["audit_records_missing_total"] == 3
    assert t.gauge("audit_log_completeness_ratio", source="nginx", host="api.example") == 0.97
    assert t.gauge("audit_log_completeness_ratio", source="nginx", host="console.example") == 1.0


def test_unreachable_status_endpoint_is_counted_not_fatal(tmp_path) -> None:
    completeness, _ = _completeness(
        tmp_path, [{"url": f"http://127.0.0.1:{free_port()}/stub_status", "format": "stub_status"}])
    completeness.tick(time.time_ns())
    assert completeness._telemetry.snapshot()["audit_counter_scrape_errors_total"] == 1


def _vts_metrics(totals: dict[str, int], when_ns: int):
    """VTS counters as the collector's prometheus receiver sends them (see
    tests/unit/sources/test_nginx_counters.py, which checks this shape against the real collector):
    a
    cumulative Sum nginx_vts_server_requests_total, double values, one point per host and
    status class, start time 0."""
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for key, value in (("service.name", "nginx_vts"), ("service.instance.id", "nginx:8081")):
        kv = rm.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    metric = rm.scope_metrics.add().metrics.add()
    metric.name = "nginx_vts_server_requests_total"
    metric.sum.aggregation_temporality = 2  # cumulative
    metric.sum.is_monotonic = True
    for host, total in totals.items():
        for code, share in (("2xx", total - total // 10), ("4xx", total // 10)):
            point = metric.sum.data_points.add()
            point.time_unix_nano, point.as_double = when_ns, float(share)
            for key, value in (("host", host), ("code", code)):
                kv = point.attributes.add()
                kv.key, kv.value.string_value = key, value
    return req


def test_vts_counters_from_the_collector_through_the_otlp_service(downstream, tmp_path) -> None:
    """The collector's VTS metrics reach reconciliation through the processor's OTLP
    MetricsService, on a real gRPC server."""
    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

    from audit_guard.otlp.exporter import SpanExporter
    from audit_guard.otlp.server import OtlpServer

    port = free_port()
    settings = load_settings(server={"listen": f"127.0.0.1:{port}"},
                             exporter={"endpoint": f"127.0.0.1:{downstream.port}"},
                             reconcile={"settle_s": 1, "state_dir": str(tmp_path)})
    state = CompletenessState(settings.reconcile)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    server = OtlpServer(settings.server, pipeline, SpanExporter(settings.exporter), Telemetry())
    server.completeness = Completeness(settings.reconcile, state, pipeline, server.exporter,
                                       server.telemetry)
    server.start()
    try:
        stub = metrics_service_pb2_grpc.MetricsServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{port}"))
        t0 = time.time_ns() - 60 * S
        stub.Export(_vts_metrics({"api.example": 100}, t0), timeout=10)
        lines = [orjson.dumps({"msec": f"{(t0 + S) / S:.3f}", "request_id": f"{i:032x}",
                               "request_method": "GET", "uri": "/v1/x", "status": "200",
                               "server_name": "api.example"}).decode() for i in range(18)]
        _hand_on(server.completeness, pipeline, lines)
        stub.Export(_vts_metrics({"api.example": 120}, t0 + 10 * S), timeout=10)
        stub.Export(_vts_metrics({"api.example": 120}, t0 + 20 * S), timeout=10)
        server.completeness.tick(time.time_ns())
        t = server.telemetry
        assert t.snapshot()["audit_records_missing_total"] == 2
        assert t.gauge("audit_log_completeness_ratio", source="nginx",
                       host="api.example") == 18 / 20
    finally:
        server.stop()
