"""audit_nginx_records_by_zone_total: each instance's access-log records per server zone, which
Prometheus sums over the instances and compares with nginx's VTS counters (docs/scale-out.md).
Through the real OTLP server (gRPC), pipeline and OpenTelemetry SDK (an in-memory reader)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from audit_guard.completeness import CompletenessState
from audit_guard.config import load_settings
from audit_guard.otlp.exporter import SpanExporter
from audit_guard.otlp.server import OtlpServer
from audit_guard.pipeline import Pipeline
from audit_guard.telemetry import Telemetry
from demo.procs import free_port
from tests.unit.correlate.test_reconcile import logs, nginx_line, rid


def line(server_name: str, host: str = "ignored.example") -> str:
    return orjson.dumps({**orjson.loads(nginx_line(rid())), "server_name": server_name,
                         "host": host}).decode()


class Instance:
    def __init__(self, downstream: Any, zone_counts_max: int) -> None:
        port = free_port()
        settings = load_settings(
            server={"listen": f"127.0.0.1:{port}"},
            exporter={"endpoint": f"127.0.0.1:{downstream.port}", "max_wait_s": 1.5},
            reconcile={"zone_counts_max": zone_counts_max})
        state = CompletenessState(settings.reconcile)
        pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
        self.reader = InMemoryMetricReader()
        telemetry = Telemetry(MeterProvider(metric_readers=[self.reader]), zone_counts_max)
        self.server = OtlpServer(settings.server, pipeline, SpanExporter(settings.exporter),
                                 telemetry)
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = logs_service_pb2_grpc.LogsServiceStub(self.channel)

    def by_zone(self) -> dict[str, int]:
        data = self.reader.get_metrics_data()
        out: dict[str, int] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == "audit_nginx_records_by_zone_total":
                        for point in metric.data.data_points:
                            out[str(point.attributes["zone"])] = int(point.value)
        return out

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture
def instance(downstream) -> Iterator[Instance]:
    i = Instance(downstream, zone_counts_max=3)
    yield i
    i.close()


def test_records_are_counted_per_zone_once(instance: Instance) -> None:
    first = logs("nginx", line("a.example"), line("a.example"), line("b.example"),
                 line("", host="c.example"))  # no $server_name: the Host, as VTS's zones
    instance.stub.Export(first, timeout=10)
    assert instance.by_zone() == {"a.example": 2, "b.example": 1, "c.example": 1}
    # The collector sends the same request again (load_balancing retries it whole): the
    # records were counted the first time.
    instance.stub.Export(first, timeout=10)
    assert instance.by_zone() == {"a.example": 2, "b.example": 1, "c.example": 1}
    instance.stub.Export(logs("nginx", line("a.example")), timeout=10)
    assert instance.by_zone()["a.example"] == 3


def test_zones_past_the_cap_count_as_other(instance: Instance) -> None:
    instance.stub.Export(logs("nginx", *(line(f"z{i}.example") for i in range(5))), timeout=10)
    counts = instance.by_zone()
    assert len(counts) == 4 and counts.pop("other") == 2
    assert sum(counts.values()) == 3
    # A zone labelled before keeps its label; a new one still goes to "other".
    known = next(iter(counts))
    instance.stub.Export(logs("nginx", line(known), line("new.example")), timeout=10)
    assert instance.by_zone()[known] == 2 and instance.by_zone()["other"] == 3


def test_zero_turns_the_counter_off(downstream) -> None:
    off = Instance(downstream, zone_counts_max=0)
    try:
        off.stub.Export(logs("nginx", line("a.example")), timeout=10)
        assert off.by_zone() == {}
    finally:
        off.close()
