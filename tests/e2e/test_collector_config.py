"""The collector pipeline users copy (collector-config/audit-guard.yaml) and the Jaeger v2 config,
checked against the real programs built by scripts/bootstrap (.cache/bin).

- `otelcol validate` accepts the file and rejects broken copies;
- the collector really starts (validate does not catch everything), becomes healthy even though
  the VTS target serves nothing, and exposes its internal `otelcol_` metrics;
- access-log lines reach the processor as raw bodies (cut JSON stays cut JSON);
- lines read while the processor is down survive a collector restart (offsets + persistent queue)
  and are delivered exactly once;
- batching happens after the persistent queues, bounded by size: a backlog leaves in requests
  the processor and a 4 MiB trace backend accept; the egress receiver's 4 MiB limit holds;
- every file source reads its first rotated name (`<name>.1`) too;
- a span sent to the egress receiver arrives in Jaeger;
- nothing listens on a non-loopback address.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from demo.backends import (
    CollectorEndpoints,
    JaegerClient,
    JaegerPorts,
    collector_config_path,
    span_tags,
    start_collector,
    start_jaeger,
)
from demo.procs import ManagedProcess, free_port, tool_path, wait_until
from tests.support.otlp_doubles import RecordingDownstream

pytestmark = pytest.mark.e2e

TRACE_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
MiB = 1024 * 1024
PROCESSOR_MAX_MESSAGE_BYTES = 64 * MiB  # audit_guard.config: otlp.max_message_bytes default
SPAN_ID = "0102030405060708"


@pytest.fixture(scope="module")
def otelcol() -> Path:
    # No skip: `make test` builds the tools first, so a missing one is a real failure.
    return tool_path("otelcol-audit-guard")


# ------------------------------------------------------------------------------------- helpers


def send_span(
    endpoint: str,
    trace_id_hex: str,
    span_id_hex: str,
    *,
    name: str = "GET /v1/chat-messages",
    service: str = "audit-guard-test",
    attributes: dict[str, str] | None = None,
) -> None:
    """Export one SERVER span over OTLP gRPC (insecure) to `endpoint` (host:port)."""
    now = time.time_ns()
    span = trace_pb2.Span(
        trace_id=bytes.fromhex(trace_id_hex),
        span_id=bytes.fromhex(span_id_hex),
        name=name,
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=now - 5_000_000,
        end_time_unix_nano=now,
        attributes=[_kv(k, v) for k, v in (attributes or {}).items()],
    )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=[_kv("service.name", service)]),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name="tests"), spans=[span]
                    )
                ],
            )
        ]
    )
    with grpc.insecure_channel(endpoint) as channel:
        response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10)
    assert response.partial_success.rejected_spans == 0, response.partial_success.error_message


def _kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def _any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class FakeProcessor(
    logs_service_pb2_grpc.LogsServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """Stands in for the audit-guard processor: an OTLP gRPC server recording the log records
    (and the size of each logs request). It accepts requests up to 64 MiB, as the processor
    does (otlp.max_message_bytes)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.records: list[logs_pb2.LogRecord] = []
        self.resources: list[dict[str, Any]] = []  # the resource attributes of each record
        self.request_sizes: list[int] = []
        self._lock = threading.Lock()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_receive_message_length", PROCESSOR_MAX_MESSAGE_BYTES)])
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        if self._server.add_insecure_port(f"127.0.0.1:{port}") != port:
            raise RuntimeError(f"cannot bind 127.0.0.1:{port}")

    def Export(  # noqa: N802 - gRPC method name
        self, request: Any, context: grpc.ServicerContext
    ) -> Any:
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            with self._lock:
                self.request_sizes.append(request.ByteSize())
                for rl in request.resource_logs:
                    resource = {a.key: _any_value(a.value) for a in rl.resource.attributes}
                    for sl in rl.scope_logs:
                        self.records.extend(sl.log_records)
                        self.resources.extend([resource] * len(sl.log_records))
            return logs_service_pb2.ExportLogsServiceResponse()
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def bodies(self) -> list[str]:
        with self._lock:
            return [r.body.string_value for r in self.records]

    def bodies_by_file(self) -> list[tuple[str, str]]:
        """(log.file.path, body) of every record received, in arrival order."""
        with self._lock:
            return [(next((a.value.string_value for a in r.attributes
                           if a.key == "log.file.path"), ""), r.body.string_value)
                    for r in self.records]

    def __enter__(self) -> FakeProcessor:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)


def metric_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`; None if there is none."""
    total: float | None = None
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total = (total or 0.0) + float(value)
    return total


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def listening_addresses(pid: int) -> set[str]:
    """IP addresses of the TCP listeners and bound UDP sockets owned by process `pid` (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for table, wanted_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == wanted_state and fields[9] in inodes:
                addresses.add(_decode_proc_address(fields[1].split(":")[0]))
    return addresses


def _decode_proc_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc/net stores the address as 32-bit words in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def collector_env(tmp_path: Path) -> dict[str, str]:
    return CollectorEndpoints(
        egress_port=free_port(),
        health_port=free_port(),
        metrics_port=free_port(),
        storage_dir=tmp_path / "storage",
        access_log=tmp_path / "access.log",
        processor_endpoint=f"127.0.0.1:{free_port()}",
        traces_endpoint=f"127.0.0.1:{free_port()}",
        vts_target=f"127.0.0.1:{free_port()}",
    ).env()


def validate(otelcol: Path, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(otelcol), "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def jaeger(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ManagedProcess, JaegerPorts]]:
    tool_path("jaeger")
    proc, ports = start_jaeger(tmp_path_factory.mktemp("jaeger"))
    try:
        yield proc, ports
    finally:
        proc.stop()


@pytest.fixture
def access_log(tmp_path: Path) -> Path:
    path = tmp_path / "access.log"
    path.touch()
    return path


# --------------------------------------------------------------------------------------- tests


def test_validate_accepts_the_shipped_config(otelcol: Path, tmp_path: Path) -> None:
    result = validate(otelcol, collector_config_path(), collector_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_accepts_the_defaults_without_env(otelcol: Path) -> None:
    # Every ${env:NAME:-default} has a usable default.
    result = validate(otelcol, collector_config_path(), {})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("unknown_key", "no_such_key"),
        ("undeclared_exporter", "otlp_grpc/nowhere"),
        ("bad_start_at", "start_at"),
    ],
)
def test_validate_rejects_a_broken_copy(
    otelcol: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    config: dict[str, Any] = yaml.safe_load(collector_config_path().read_text())
    broken = copy.deepcopy(config)
    if breakage == "unknown_key":
        broken["exporters"]["otlp_grpc/processor"]["sending_queue"]["no_such_key"] = True
    elif breakage == "undeclared_exporter":
        broken["service"]["pipelines"]["logs/audit"]["exporters"] = ["otlp_grpc/nowhere"]
    else:
        broken["receivers"]["file_log/nginx_access"]["start_at"] = "middle"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = validate(otelcol, path, collector_env(tmp_path))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_validate_is_not_enough_start_fails_on_missing_storage(
    otelcol: Path, tmp_path: Path, access_log: Path
) -> None:
    """A queue pointing at an undeclared storage extension passes validate but cannot start."""
    config: dict[str, Any] = yaml.safe_load(collector_config_path().read_text())
    config["exporters"]["otlp_grpc/processor"]["sending_queue"]["storage"] = "file_storage/nope"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    assert validate(otelcol, path, collector_env(tmp_path)).returncode == 0
    with pytest.raises(RuntimeError, match="no storage client extension found"):
        proc, _ = start_collector(
            tmp_path,
            access_log=access_log,
            processor_endpoint=f"127.0.0.1:{free_port()}",
            traces_endpoint=f"127.0.0.1:{free_port()}",
            vts_target=f"127.0.0.1:{free_port()}",
            config=path,
            timeout=30,
        )
        proc.stop()  # pragma: no cover - only if it unexpectedly started


def test_collector_starts_healthy_and_serves_internal_metrics(
    otelcol: Path, tmp_path: Path, access_log: Path
) -> None:
    # Nothing listens on the processor, trace backend and VTS ports: the collector must still
    # start (a failed scrape or export is retried, never fatal).
    proc, ep = start_collector(
        tmp_path,
        access_log=access_log,
        processor_endpoint=f"127.0.0.1:{free_port()}",
        traces_endpoint=f"127.0.0.1:{free_port()}",
        vts_target=f"127.0.0.1:{free_port()}",
    )
    try:
        access_log.write_text('{"status":200,"request_id":"' + TRACE_ID + '"}\n')
        text = ""

        def accepted() -> bool:
            nonlocal text
            text = scrape(ep.metrics_url)
            value = metric_value(
                text, "otelcol_receiver_accepted_log_records", receiver="file_log/nginx_access"
            )
            return (value or 0) >= 1

        wait_until(accepted, 30, "the access-log line to be counted")
        assert "otelcol_" in text
        for exporter, data_type in (
            ("otlp_grpc/processor", "logs"),
            ("otlp_grpc/processor", "metrics"),
            ("otlp_grpc/traces", "traces"),
        ):
            assert (
                metric_value(
                    text, "otelcol_exporter_queue_capacity", exporter=exporter, data_type=data_type
                )
                == 1024 * MiB  # sizer: bytes (1 GiB on disk)
            )
        # The refused/failed counters exist from the start (at 0); the exporter's
        # send_failed/enqueue_failed counters appear with their first increment.
        assert (
            metric_value(
                text, "otelcol_receiver_refused_log_records", receiver="file_log/nginx_access"
            )
            == 0
        )
        assert proc.proc is not None and proc.proc.poll() is None
        assert listening_addresses(proc.proc.pid) == {"127.0.0.1"}
        assert (ep.storage_dir / "receiver_filelog_nginx_access").exists()
    finally:
        proc.stop()


def test_access_log_lines_reach_the_processor_raw(tmp_path: Path, access_log: Path) -> None:
    tool_path("otelcol-audit-guard")
    lines = [
        '{"status":200,"request_id":"' + TRACE_ID + '","body_bytes_sent":30000}',
        '{"status":200,"request_id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","body_by',  # cut JSON
    ]
    with FakeProcessor(free_port()) as fake:
        # Lines written before the collector starts must be read (start_at: beginning).
        access_log.write_text(lines[0] + "\n")
        proc, _ = start_collector(
            tmp_path,
            access_log=access_log,
            processor_endpoint=f"127.0.0.1:{fake.port}",
            traces_endpoint=f"127.0.0.1:{free_port()}",
            vts_target=f"127.0.0.1:{free_port()}",
        )
        try:
            with access_log.open("a") as f:
                f.write(lines[1] + "\n")
            wait_until(lambda: len(fake.bodies()) >= 2, 30, "two records at the fake processor")
            assert fake.bodies() == lines
            for record, resource in zip(fake.records, fake.resources, strict=True):
                attrs = {a.key: _any_value(a.value) for a in record.attributes}
                # on the resource: the processor reads it once per batch, not once per line
                assert resource["audit.source"] == "nginx_access"
                assert attrs["log.file.path"] == str(access_log)
                assert attrs["log.file.name"] == access_log.name
        finally:
            proc.stop()


def test_lines_survive_a_restart_while_the_processor_is_down(
    tmp_path: Path, access_log: Path
) -> None:
    """Offsets + persistent queue: read while the processor is down, delivered once after."""
    tool_path("otelcol-audit-guard")
    processor_port = free_port()
    storage = tmp_path / "storage"
    common: dict[str, Any] = {
        "access_log": access_log,
        "processor_endpoint": f"127.0.0.1:{processor_port}",
        "traces_endpoint": f"127.0.0.1:{free_port()}",
        "vts_target": f"127.0.0.1:{free_port()}",
        "storage_dir": storage,
    }
    lines = [f'{{"n":{i}}}' for i in range(3)]
    access_log.write_text("".join(line + "\n" for line in lines))

    proc, ep = start_collector(tmp_path, **common)

    def queued() -> bool:
        size = metric_value(
            scrape(ep.metrics_url),
            "otelcol_exporter_queue_size",
            exporter="otlp_grpc/processor",
            data_type="logs",
        )
        return (size or 0) >= 1

    try:
        wait_until(queued, 30, "the lines to sit in the persistent queue")
    finally:
        proc.stop()  # logs "Exporting failed. Dropping data." but the item stays on disk

    with FakeProcessor(processor_port) as fake:
        proc, _ = start_collector(tmp_path, **common)
        try:
            wait_until(lambda: len(fake.bodies()) >= 3, 30, "the queued lines to be delivered")
            time.sleep(3)  # give duplicates (re-read file, re-sent queue item) a chance to show
            assert sorted(fake.bodies()) == lines
        finally:
            proc.stop()


def test_egress_span_reaches_jaeger(
    jaeger: tuple[ManagedProcess, JaegerPorts], tmp_path: Path, access_log: Path
) -> None:
    jaeger_proc, ports = jaeger
    proc, ep = start_collector(
        tmp_path,
        access_log=access_log,
        processor_endpoint=f"127.0.0.1:{free_port()}",
        traces_endpoint=ports.otlp_endpoint,
        vts_target=f"127.0.0.1:{free_port()}",
    )
    try:
        send_span(
            ep.egress,
            TRACE_ID,
            SPAN_ID,
            service="audit-guard-test",
            attributes={"audit.flag": "cut_body"},
        )
        client = JaegerClient(ports.query_url)
        spans = client.wait_for_spans(lambda s: s["spanID"] == SPAN_ID, 30, trace_id=TRACE_ID)
        trace = client.trace(TRACE_ID)
        assert trace is not None and trace["traceID"] == TRACE_ID
        span = spans[0]
        assert span["operationName"] == "GET /v1/chat-messages"
        assert span["process"]["serviceName"] == "audit-guard-test"
        tags = span_tags(span)
        assert tags["audit.flag"] == "cut_body"
        assert tags["span.kind"] == "server"
        assert "audit-guard-test" in client.services()
        found = client.find_traces("audit-guard-test", {"audit.flag": "cut_body"})
        assert [t["traceID"] for t in found] == [TRACE_ID]
        assert client.find_traces("audit-guard-test", {"audit.flag": "none"}) == []
        v3 = client.find_traces_v3("audit-guard-test")
        assert v3 is not None and v3["result"]["resourceSpans"]
        assert client.trace("ffffffffffffffffffffffffffffffff") is None
        assert jaeger_proc.proc is not None
        assert listening_addresses(jaeger_proc.proc.pid) == {"127.0.0.1"}
    finally:
        proc.stop()


def test_multi_line_pgaudit_entries_arrive_whole(tmp_path: Path, access_log: Path) -> None:
    """stderr format: a statement continues on TAB lines; each entry must stay one record."""
    pg_log = tmp_path / "postgresql-15-main.log"
    entries = [
        "2026-11-26 14:00:01.250 UTC [4242] app@dify LOG:  AUDIT: SESSION,7,1,READ,SELECT,"
        "TABLE,public.datasets,\"SELECT id,\n\t       name\n\t  FROM datasets;\",<none>",
        "2026-11-26 14:00:02.000 UTC [4242] app@dify LOG:  duration: 0.5 ms",
    ]
    pg_log.write_text("\n".join(entries) + "\n")
    with FakeProcessor(free_port()) as fake:
        proc, _ = start_collector(
            tmp_path, access_log=access_log, pg_log=pg_log,
            processor_endpoint=f"127.0.0.1:{fake.port}",
            traces_endpoint=f"127.0.0.1:{free_port()}", vts_target=f"127.0.0.1:{free_port()}",
        )
        try:
            # the last entry is flushed after force_flush_period (2 s): nothing follows it
            wait_until(lambda: len(fake.bodies()) >= 2, 30, "both PostgreSQL entries")
            assert fake.bodies() == entries
            assert {r["audit.source"] for r in fake.resources} == {"pgaudit"}
        finally:
            proc.stop()


# ------------------------------------------------------------- durability, rotation, size limits


def _shipped() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(collector_config_path().read_text())
    return config


def test_batching_happens_after_the_persistent_queues() -> None:
    """No in-memory `batch` processor in front of a queue (a crash lost what it held): every
    exporter batches inside its persistent sending_queue, bounded by size."""
    cfg = _shipped()
    assert "batch" not in (cfg.get("processors") or {})
    for name, pipe in cfg["service"]["pipelines"].items():
        assert pipe["processors"] == ["memory_limiter"], name
    for name, exporter in cfg["exporters"].items():
        if name.split("/")[0] == "file":  # findings' JSON lines: written, unbuffered, before
            assert "sending_queue" not in exporter, name  # the egress receiver answers
            continue
        queue = exporter["sending_queue"]
        assert queue["storage"] == "file_storage" and queue["block_on_overflow"] is True, name
        assert queue["batch"]["sizer"] == "bytes", name
        assert queue["batch"]["min_size"] <= queue["batch"]["max_size"], name


def test_size_limits_fit_together() -> None:
    """processor requests (exporter.max_request_bytes) < egress receiver limit; egress batches
    <= the processor's request size < the trace backend's 4 MiB; logs batches hold the biggest
    record and stay under what the processor accepts."""
    from audit_guard.config import ExporterConfig, ServerConfig

    cfg = _shipped()
    egress_limit = cfg["receivers"]["otlp/egress"]["protocols"]["grpc"]["max_recv_msg_size_mib"]
    processor_request = ExporterConfig().max_request_bytes
    assert processor_request < egress_limit * MiB == 4 * MiB
    traces_batch = cfg["exporters"]["otlp_grpc/traces"]["sending_queue"]["batch"]["max_size"]
    assert processor_request <= traces_batch < 4 * MiB  # Jaeger/Tempo: gRPC's 4 MiB default
    logs_batch = cfg["exporters"]["otlp_grpc/processor"]["sending_queue"]["batch"]["max_size"]
    containers = cfg["receivers"]["file_log/containers"]["operators"]
    biggest_record = max(op.get("max_log_size", "0MiB") for op in containers)
    assert biggest_record == "4MiB" and 4 * MiB < logs_batch <= ServerConfig().max_message_bytes


def test_every_file_source_reads_its_first_rotated_name() -> None:
    for name, receiver in _shipped()["receivers"].items():
        if not name.startswith("file_log/"):
            continue
        live, *rest = receiver["include"]
        assert rest == [live + ".1"], name  # `.1`, never a compressed `.gz`


def test_egress_receiver_refuses_requests_over_4_mib(tmp_path: Path, access_log: Path) -> None:
    backend = RecordingDownstream()
    backend.server.start()
    proc, ep = start_collector(
        tmp_path, access_log=access_log, processor_endpoint=f"127.0.0.1:{free_port()}",
        traces_endpoint=f"127.0.0.1:{backend.port}", vts_target=f"127.0.0.1:{free_port()}")
    try:
        with grpc.insecure_channel(ep.egress, options=[
                ("grpc.max_send_message_length", 8 * MiB)]) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            stub.Export(_big_span_request(1, 3 * MiB), timeout=10)  # the processor's maximum
            with pytest.raises(grpc.RpcError) as refused:
                stub.Export(_big_span_request(2, 5 * MiB), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        proc.stop()
        backend.server.stop(0)


def _big_span_request(n: int, size: int, spans: int = 1
                      ) -> trace_service_pb2.ExportTraceServiceRequest:
    """`spans` spans with ids n, n+1, … whose attribute values add up to about `size` bytes."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(n, n + spans):
        scope.spans.append(trace_pb2.Span(
            trace_id=(1 << 120 | i).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"),
            name="big", start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns(),
            attributes=[_kv("pad", "x" * (size // spans))]))
    return req


def test_backlogs_leave_in_requests_under_the_size_limits(tmp_path: Path,
                                                          access_log: Path) -> None:
    """A 24 MiB log backlog reaches the processor in batched requests of at most 8 MiB; 21 MiB
    of spans in 3.5 MiB requests reach a backend with gRPC's default 4 MiB limit (as
    Jaeger/Tempo) in requests of at most 3 MiB — none refused, none lost."""
    lines = [f'{{"n":{i},"pad":"{"y" * 230}"}}' for i in range(100_000)]
    access_log.write_text("\n".join(lines) + "\n")
    backend = RecordingDownstream()  # grpc.server defaults: 4 MiB maximum request
    backend.server.start()
    with FakeProcessor(free_port()) as fake:
        proc, ep = start_collector(
            tmp_path, access_log=access_log, processor_endpoint=f"127.0.0.1:{fake.port}",
            traces_endpoint=f"127.0.0.1:{backend.port}", vts_target=f"127.0.0.1:{free_port()}")
        try:
            with grpc.insecure_channel(ep.egress) as channel:
                stub = trace_service_pb2_grpc.TraceServiceStub(channel)
                for k in range(6):  # 3.5 MiB each (< 4 MiB: accepted), split at 3 MiB
                    stub.Export(_big_span_request(k * 20, 7 * MiB // 2, spans=20), timeout=10)
            wait_until(lambda: len(fake.bodies()) >= len(lines), 60, "the whole log backlog")
            wait_until(lambda: len(backend.spans()) >= 120, 60, "all 120 spans at the backend")
            assert sorted(fake.bodies()) == sorted(lines)
            assert max(fake.request_sizes) <= 8 * MiB
            assert max(fake.request_sizes) > 1 * MiB  # batched (file_log emits 100 lines)
            sizes = [r.ByteSize() for r in backend.requests]
            assert max(sizes) <= 3 * MiB and len(backend.spans()) == 120, sizes
        finally:
            proc.stop()
            backend.server.stop(0)
