"""A log read again is the same records, not duplicates (issue #11: kill-collector rewrote
records). The real collector with the shipped config reads an access log, loses its saved
offsets (its storage dir removed, as a kill -9 before the offsets were saved loses the last
ones) and reads the whole file again, in differently composed requests. Processed by the
pipeline, the second reading gives byte-identical spans; a line that nginx really wrote twice
is a duplicate in both readings, under the same id."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from demo.backends import start_collector
from demo.procs import free_port, tool_path, wait_until
from tests.e2e.test_collector_config import FakeProcessor

pytestmark = pytest.mark.e2e

T0 = 1764165600


class RecordingProcessor(FakeProcessor):
    """FakeProcessor that also keeps each logs request whole."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.requests: list[bytes] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            self.requests.append(request.SerializeToString())
        return super().Export(request, context)


def line(i: int) -> str:
    return orjson.dumps({"msec": f"{T0 + i / 100:.3f}", "request_id": f"{i + 1:032x}",
                         "request_method": "POST", "request_uri": "/v1/chat-messages",
                         "status": "200", "user_id": "u1", "app_id": "a1",
                         "request_completion": "OK"}).decode()


def spans_of(pipeline: Pipeline, requests: list[bytes]) -> dict[bytes, bytes]:
    """span id → the span's bytes, over every request processed in order."""
    out: dict[bytes, bytes] = {}
    for payload in requests:
        request = logs_service_pb2.ExportLogsServiceRequest.FromString(payload)
        traces, _ = pipeline.process_logs(request, time.time_ns())
        for rs in ExportTraceServiceRequest.FromString(traces).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out[span.span_id] = span.SerializeToString()
    return out


def test_a_log_read_again_gives_the_same_spans(tmp_path: Path) -> None:
    tool_path("otelcol-audit-guard")  # no skip: a missing collector is a failure
    log = tmp_path / "access.log"
    lines = [line(i) for i in range(3000)]
    lines.insert(1500, lines[1499])  # nginx wrote this one twice: a real duplicate
    storage = tmp_path / "storage"
    args = {"access_log": log, "traces_endpoint": f"127.0.0.1:{free_port()}",
            "vts_target": f"127.0.0.1:{free_port()}", "storage_dir": storage}
    readings = []
    with RecordingProcessor(free_port()) as fake:
        args["processor_endpoint"] = f"127.0.0.1:{fake.port}"
        # First reading: the lines arrive in three writes, so in several requests.
        with log.open("w") as fh:
            fh.write("\n".join(lines[:700]) + "\n")
        proc, _ = start_collector(tmp_path / "first", **args)
        try:
            wait_until(lambda: len(fake.bodies()) >= 700, 60, "the first lines to arrive")
            with log.open("a") as fh:
                fh.write("\n".join(lines[700:]) + "\n")
            wait_until(lambda: len(fake.bodies()) >= len(lines), 60, "every line to arrive")
        finally:
            proc.stop()
        readings.append(list(fake.requests))
        fake.requests.clear()
        shutil.rmtree(storage)  # the saved offsets are gone: everything is read again
        proc, _ = start_collector(tmp_path / "second", **args)
        try:
            wait_until(lambda: len(fake.bodies()) >= 2 * len(lines), 60, "the second reading")
        finally:
            proc.stop()
        readings.append(list(fake.requests))
    first_requests, again_requests = readings
    assert len(first_requests) >= 2  # the first reading came in several requests
    pipeline = Pipeline(load_settings())
    first = spans_of(pipeline, first_requests)
    again = spans_of(pipeline, again_requests)
    assert len(first) == len(lines)  # the line written twice has a span of its own
    assert again == first  # the same spans, byte for byte: no record rewritten
    flagged = [s for s in first.values() if b"duplicate" in s]
    assert len(flagged) == 1
