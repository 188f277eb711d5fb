"""Tamper evidence end to end (issue #14), through the real programs on loopback:
demo upstream ← real nginx → collector → audit-guard serve (integrity on) → the collector's
egress traces pipeline → real Jaeger AND the collector's `file` exporter (OTLP JSON lines).

A clean run verifies intact from the file and from Jaeger's query API; then copies of the file
are tampered with as someone with write access to the backend's storage would (delete a record,
change an attribute, insert a forged record, reorder two, remove a digest, add a digest signed
by another key) and `audit-guard verify` must report each as such, naming the record.
Re-sending the same Export gives identical chain attributes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from demo.backends import start_collector
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from demo.stack import Stack
from demo.traffic import DemoRequest, send
from tests.support.integrity_trail import (
    Trail,
    access_line,
    attr,
    chained,
    edit_spans,
    logs_request,
    otlp_json_line,
    set_attr,
)
from tests.support.otlp_doubles import RecordingDownstream, span_attributes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REQUESTS = [DemoRequest("POST", "/v1/chat-messages", user=f"u{i}", body={"query": "hi"})
            if i % 2 else DemoRequest("GET", f"/v1/datasets/ds-{i}/documents", user=f"u{i}")
            for i in range(12)]
# Egress traces to Jaeger and to a file, as an operator keeps a copy of the trail.
OVERLAY = """
exporters:
  file/integrity:
    path: {path}
    format: json
    flush_interval: 1s
service:
  pipelines:
    traces/egress:
      receivers: [otlp/egress]
      processors: [memory_limiter]
      exporters: [otlp_grpc/traces, file/integrity]
"""


class IntegrityStack(Stack):
    """The demo stack, with the processor's spans through the collector's egress pipeline."""

    spans_file: Path

    def _start_collector(self) -> None:
        assert self.nginx_paths is not None and self.jaeger_ports is not None
        self.spans_file = self.workdir / "egress-spans.json"
        overlay = self.workdir / "integrity-overlay.yaml"
        overlay.write_text(OVERLAY.format(path=self.spans_file))
        collector, endpoints = start_collector(
            self.workdir, access_log=self.nginx_paths.access_log,
            nginx_error_log=self.nginx_paths.error_log, app_log=self.app_log,
            processor_endpoint=f"127.0.0.1:{self.processor_port}",
            traces_endpoint=self.jaeger_ports.otlp_endpoint,
            vts_target=f"127.0.0.1:{free_port()}", overlays=[overlay])
        self.procs.append(collector)
        self.processor_env["AUDIT_GUARD_EXPORTER__ENDPOINT"] = endpoints.egress


def file_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last: empty, or still being written
    return [s for line in lines if line.strip()
            for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"]
            for s in ss["spans"]]


def verify(*args: str) -> tuple[int, dict[str, Any]]:
    run = subprocess.run([sys.executable, "-m", "audit_guard.cli", "verify", *args],
                         capture_output=True, text=True, timeout=120)
    report = orjson.loads(run.stdout) if run.stdout.strip() else {"stderr": run.stderr}
    return run.returncode, report


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    wd = tmp_path_factory.mktemp("integrity")
    stack = IntegrityStack(wd, processor_env={
        "AUDIT_GUARD_INTEGRITY__ENABLED": "true",
        "AUDIT_GUARD_INTEGRITY__DIGEST_INTERVAL_S": "1",
    })
    with stack:
        for req in REQUESTS:
            send(stack.base_url, req)

        def all_chained() -> bool:
            return len([s for s in file_spans(stack.spans_file)
                        if attr(s, "audit.chain.seq") is not None]) >= 2 * len(REQUESTS)

        wait_until(all_chained, 60, "every nginx and app record chained in the egress file")
        resent = _resend_twice(stack)
        wait_until(lambda: len(file_spans(stack.spans_file)) >= resent, 30, "the re-sends")
        stack.procs[-1].stop()  # nginx first (reversed start order is close()'s job) …
        processor = next(p for p in stack.procs if p.name == "processor")
        processor.stop()  # SIGTERM: the final digest goes out before the exporter closes
        time.sleep(2.5)  # the file exporter flushes every second
        keys = wd / "processor-state" / "integrity" / "public-keys"
        yield stack, keys
    # Jaeger and the rest stopped by the context manager.


def _resend_twice(stack: Stack) -> int:
    """The same Export sent twice straight to the processor (a collector retry after a lost
    answer): two lines far beyond the access log's real offsets. Returns the spans expected."""
    request = logs_request([access_line(1000), access_line(1001)], first_offset=10**9)
    with grpc.insecure_channel(f"127.0.0.1:{stack.processor_port}") as channel:
        export = logs_service_pb2_grpc.LogsServiceStub(channel).Export
        export(request, timeout=30)
        export(request, timeout=30)
    return len(file_spans(stack.spans_file)) + 4


def test_a_clean_run_verifies_intact_from_the_file_and_from_jaeger(run: Any) -> None:
    stack, keys = run
    code, report = verify("--file", str(stack.spans_file), "--public-key", str(keys))
    assert code == 0, json.dumps(report)
    assert report["intact"] and report["digests"] >= 2
    chains = report["chains"]
    assert {c.split("/")[1] for c in chains} == {"nginx", "app"}
    assert report["records"] >= 2 * len(REQUESTS)
    code, report = verify("--jaeger", stack.jaeger.base_url, "--public-key", str(keys),
                          "--since", str(time.time() - 600))
    assert code == 0, json.dumps(report)
    assert report["records"] >= 2 * len(REQUESTS) and report["digests"] >= 2


def test_a_resent_export_has_identical_chain_attributes(run: Any) -> None:
    stack, _ = run
    seen: dict[str, set[tuple[Any, ...]]] = {}
    resent = {f"{1001:032x}", f"{1002:032x}"}  # the request ids of access_line(1000, 1001)
    for s in file_spans(stack.spans_file):
        if s["traceId"] in resent and attr(s, "audit.chain.seq") is not None:
            seen.setdefault(s["spanId"], set()).add(
                (attr(s, "audit.chain.id"), attr(s, "audit.chain.seq"),
                 attr(s, "audit.chain.hash")))
    assert len(seen) == 2, seen
    assert all(len(values) == 1 for values in seen.values()), seen


def tampered(run: Any, tmp_path: Path, edit: Any) -> dict[str, Any]:
    stack, keys = run
    copy = tmp_path / "copy.json"
    shutil.copy(stack.spans_file, copy)
    edit_spans(copy, edit)
    code, report = verify("--file", str(copy), "--public-key", str(keys))
    assert code == 1, report
    return report


def nginx_record(spans: list[dict[str, Any]], n: int) -> dict[str, Any]:
    return [s for s in chained(spans) if attr(s, "audit.chain.id").endswith("/nginx")][n]


def test_each_tampering_is_reported_naming_the_record(run: Any, tmp_path: Path) -> None:
    victim: dict[str, Any] = {}

    def delete(spans: list[dict[str, Any]]) -> None:
        victim.update(nginx_record(spans, 3))
        nginx_record(spans, 3)["_drop"] = True

    problems = tampered(run, tmp_path, delete)["problems"]
    assert [(p["kind"], p["seq"]) for p in problems] == [
        ("record_deleted", int(attr(victim, "audit.chain.seq")))]

    def modify(spans: list[dict[str, Any]]) -> None:
        record = nginx_record(spans, 5)
        victim.update(record)
        set_attr(record, "user.id", {"stringValue": "nobody"})

    problems = tampered(run, tmp_path, modify)["problems"]
    assert [(p["kind"], p["span_id"]) for p in problems] == [
        ("record_modified", victim["spanId"])]
    assert "copy.json line" in problems[0]["where"]

    def insert(spans: list[dict[str, Any]]) -> None:
        forged = orjson.loads(orjson.dumps(nginx_record(spans, 2)))
        forged["spanId"] = "f0" * 8
        set_attr(forged, "user.id", {"stringValue": "alibi"})
        spans.append(forged)

    problems = tampered(run, tmp_path, insert)["problems"]
    assert [(p["kind"], p["span_id"]) for p in problems] == [("record_inserted", "f0" * 8)]

    def reorder(spans: list[dict[str, Any]]) -> None:
        a, b = nginx_record(spans, 6), nginx_record(spans, 7)
        seq_a, seq_b = attr(a, "audit.chain.seq"), attr(b, "audit.chain.seq")
        set_attr(a, "audit.chain.seq", {"intValue": seq_b})
        set_attr(b, "audit.chain.seq", {"intValue": seq_a})

    problems = tampered(run, tmp_path, reorder)["problems"]
    assert sorted(p["kind"] for p in problems) == ["record_reordered", "record_reordered"]

    def remove_digest(spans: list[dict[str, Any]]) -> None:
        [s for s in spans if s["name"] == "audit.digest"][1]["_drop"] = True

    problems = tampered(run, tmp_path, remove_digest)["problems"]
    assert [p["kind"] for p in problems] == ["digest_missing"]


def test_a_digest_signed_by_another_key_is_refused(run: Any, tmp_path: Path) -> None:
    stack, keys = run
    impostor = Trail(tmp_path / "impostor", instance_id=_instance(stack.spans_file))
    impostor.export([access_line(i) for i in range(2)])
    impostor.digest(now_ns=time.time_ns())
    copy = tmp_path / "copy.json"
    shutil.copy(stack.spans_file, copy)
    with copy.open("a") as f:
        f.write(impostor.lines[-1] + "\n")
    code, report = verify("--file", str(copy), "--public-key", str(keys))
    assert code == 1
    assert "digest_key_unknown" in [p["kind"] for p in report["problems"]]
    # Given the impostor's public key too, its digest is still no continuation of the trail.
    code, report = verify("--file", str(copy), "--public-key", str(keys),
                          "--public-key", str(tmp_path / "impostor" / "keys"))
    assert code == 1
    assert {"digest_forged"} <= {p["kind"] for p in report["problems"]}


def _instance(path: Path) -> str:
    for s in file_spans(path):
        if s["name"] == "audit.digest":
            return str(attr(s, "audit.digest.instance"))
    raise AssertionError("no digest in the egress file")


def test_chain_and_digests_survive_kill_9(tmp_path: Path) -> None:
    """serve killed (SIGKILL) while an Export's spans were handed on but not acknowledged: the
    restarted serve continues the chains and the digests from the state files, and the resent
    Export carries the very chain values the backend already got. The whole backend content
    then verifies intact."""
    downstream = RecordingDownstream()
    downstream.server.start()
    state = tmp_path / "state"
    env = {"AUDIT_GUARD_INTEGRITY__ENABLED": "true",
           "AUDIT_GUARD_INTEGRITY__DIGEST_INTERVAL_S": "1",
           "AUDIT_GUARD_INTEGRITY__STATE_DIR": str(state),
           "AUDIT_GUARD_RECONCILE__ENABLED": "false",
           "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}"}
    first = _serve(tmp_path, env, "serve-1")
    try:
        _export(first.port, [access_line(i) for i in range(5)])
        wait_until(lambda: _digests(downstream) >= 1, 20, "a digest")
        downstream.delay = 4.0  # the next hand-off is slow: kill -9 while it is in flight
        in_flight = logs_request([access_line(i) for i in range(5, 9)], first_offset=5000)
        sender = futures.ThreadPoolExecutor(1).submit(_export_request, first.port, in_flight)
        time.sleep(1.5)  # computed and handed on: the downstream holds it for 4 s
        first.proc.kill()  # SIGKILL
        first.proc.wait(10)
        with pytest.raises(grpc.RpcError):
            sender.result(30)
        wait_until(lambda: _chained(downstream) == 9, 10, "the in-flight spans to land")
    finally:
        first.stop()
    downstream.delay = 0.0
    handed_on = _chain_values(downstream)
    digests_before = _digests(downstream)
    second = _serve(tmp_path, env, "serve-2")
    try:
        _export_request(second.port, in_flight)  # the collector resends what was not acked
        _export(second.port, [access_line(i) for i in range(9, 12)], first_offset=9000)
        wait_until(lambda: _digests(downstream) > digests_before, 20, "a digest after restart")
    finally:
        second.stop()  # SIGTERM: the final digest
    values = _chain_values(downstream)
    resent = values[9:13]
    assert resent == handed_on[5:9]  # identical chain values for the re-sent records
    assert [v[1] for v in values[13:16]] == [10, 11, 12]  # the chain continued
    path = tmp_path / "backend.json"
    path.write_text("".join(otlp_json_line(r.SerializeToString()) + "\n"
                            for r in downstream.requests))
    code, report = verify("--file", str(path), "--public-key", str(state / "public-keys"))
    assert code == 0, json.dumps(report)
    payloads = [orjson.loads(span_attributes(s)["audit.digest.payload"])
                for s in downstream.spans() if s.name == "audit.digest"]
    assert [p["seq"] for p in payloads] == list(range(1, len(payloads) + 1))
    assert payloads[-1]["final"] is True
    assert payloads[-1]["chains"][resent[0][0]]["last_seq"] == 12
    downstream.server.stop(0)


def _serve(tmp_path: Path, env: dict[str, str], name: str) -> ManagedProcess:
    port = free_port()
    proc = ManagedProcess(name, [sys.executable, "-m", "audit_guard.cli", "serve"],
                          log_dir=tmp_path, env={
                              **env, "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{port}",
                              "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}"}).start()
    proc.port = port  # type: ignore[attr-defined]
    proc.wait_ready(lambda: port_open(port), timeout=60)
    return proc


def _export(port: int, bodies: list[str], first_offset: int = 0) -> None:
    _export_request(port, logs_request(bodies, first_offset))


def _export_request(port: int, request: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(request, timeout=30)


def _chain_values(downstream: RecordingDownstream) -> list[tuple[str, int, str]]:
    return [(span_attributes(s).get("audit.chain.id"), span_attributes(s).get("audit.chain.seq"),
             span_attributes(s).get("audit.chain.hash"))
            for s in downstream.spans() if span_attributes(s).get("audit.chain.seq") is not None]


def _chained(downstream: RecordingDownstream) -> int:
    return len(_chain_values(downstream))


def _digests(downstream: RecordingDownstream) -> int:
    return sum(1 for s in downstream.spans() if s.name == "audit.digest")
