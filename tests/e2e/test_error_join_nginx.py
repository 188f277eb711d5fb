"""One error event, one request, with real nginx 1.22 (Debian) on keep-alive connections
(issue #18): a cut SSE stream, an upstream reset mid-body, an upstream stall past
proxy_read_timeout mid-body and a client abort, each as the 1st, 2nd and 3rd request of its
client connection, every request with the same request line; replay, the service's pipeline
and the real collector (shipped config) → `audit-guard serve` flag exactly the cut request.

The upstream is a few lines of socket code here (the demo upstream cannot reset or stall);
nginx runs the demo config (the shipped log_format and location snippet) with
proxy_read_timeout 1s.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from audit_guard.replay import replay
from audit_guard.sources.nginx_error import FLAG_FOR_KIND, parse_lines
from demo.backends import start_collector
from demo.nginx import NginxPaths, nginx_argv, render_nginx_conf
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from tests.support.nginx_upstream import read_json_lines, wait_for_lines
from tests.support.otlp_doubles import RecordingDownstream, logs_request

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

LINE = "/v1/chat-messages"
BODY = b'{"query":"hi","response_mode":"streaming","user":"u1"}'
# scenario → (the kind nginx's line gets, the flag on the cut request)
SCENARIOS = {
    "sse_cut": ("upstream_closed", "truncated:upstream_closed"),
    "reset": ("upstream_reset", "truncated:upstream_closed"),
    "stall": ("upstream_timeout", "truncated:upstream_closed"),
    "abort": ("client_closed", "truncated:request_incomplete"),
}


class _Upstream(socketserver.BaseRequestHandler):
    """One request per upstream connection (nginx sends `Connection: close`), answered as the
    request's X-Demo-Mode header says."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        reader = sock.makefile("rb")
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        reader.read(int(headers.get("content-length") or 0))
        mode = headers.get("x-demo-mode", "ok")
        if mode == "ok":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 11\r\n\r\n{\"ok\":true}")
        elif mode == "sse_cut":  # some events, then FIN without the last chunk
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(3):
                event = f'data: {{"event":"message","answer":"{i}"}}\n\n'.encode()
                sock.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                time.sleep(0.02)
        else:  # promise 100000 bytes, send 20000, then reset / stall / keep sending
            size = 5_000_000 if mode == "abort" else 100_000
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         + f"Content-Length: {size}\r\n\r\n".encode())
            with contextlib.suppress(OSError):
                sock.sendall(b"x" * (size if mode == "abort" else 20_000))
            time.sleep(0.05)
            if mode == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif mode == "stall":
                time.sleep(2.5)  # past proxy_read_timeout 1s
        sock.close()


@contextlib.contextmanager
def nginx(tmp_path: Path) -> Iterator[tuple[NginxPaths, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc: ManagedProcess | None = None
    try:
        port, status_port = free_port(), free_port()
        paths = render_nginx_conf(tmp_path / "nginx", port, server.server_address[1],
                                  status_port)
        conf = paths.conf.read_text()
        paths.conf.write_text(conf.replace("proxy_buffering off;",
                                           "proxy_buffering off;\n proxy_read_timeout 1s;"))
        proc = ManagedProcess("nginx", nginx_argv(paths.conf), tmp_path)
        proc.start().wait_ready(lambda: port_open(port) and port_open(status_port), timeout=30)
        yield paths, port
    finally:
        if proc is not None:
            proc.stop()
        server.shutdown()
        server.server_close()


def _request(port: int, mode: str) -> bytes:
    return (f"POST {LINE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Demo-Mode: {mode}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
            ).encode() + BODY


def connection(port: int, scenario: str, position: int) -> None:
    """One client connection: `position - 1` whole answers, then the scenario's request."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(position - 1):
            sock.sendall(_request(port, "ok"))
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert reader.read(length) == b'{"ok":true}'
        sock.sendall(_request(port, scenario))
        if scenario == "abort":  # read some of the body, then reset the connection
            assert len(reader.read(65_536)) == 65_536
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        with contextlib.suppress(OSError):
            while reader.read(65_536):
                pass  # until nginx closes the connection: a cut ends it


def _spans_flags(payload: bytes, found: dict[str, set[str]]) -> None:
    """Every span's trace → its flags (none: an empty set)."""
    for rs in ExportTraceServiceRequest.FromString(payload).resource_spans:
        for span in (s for ss in rs.scope_spans for s in ss.spans):
            found.setdefault(span.trace_id.hex(), set())
            for kv in span.attributes:
                if kv.key == "audit.flags":
                    found.setdefault(span.trace_id.hex(), set()).update(
                        v.string_value for v in kv.value.array_value.values)


def test_each_cut_flags_exactly_its_request(tmp_path: Path) -> None:
    with nginx(tmp_path) as (paths, port):
        for scenario in SCENARIOS:
            for position in (1, 2, 3):
                connection(port, scenario, position)
        total = len(SCENARIOS) * 6
        access = wait_for_lines(paths.access_log, total, timeout=30)

        def cut_events() -> list[Any]:
            lines = [ln for ln in paths.error_log.read_bytes().splitlines(keepends=True)
                     if ln.endswith(b"\n")]
            return [e for e in parse_lines(enumerate(lines, 1))
                    if e.kind is not None and FLAG_FOR_KIND[e.kind] is not None]

        wait_until(lambda: len(cut_events()) >= len(SCENARIOS) * 3, 15, "the cuts' error lines")
        time.sleep(0.5)
    text = paths.error_log.read_text(errors="replace")
    by_connection: dict[int, list[dict[str, Any]]] = {}
    for line in access:
        assert line["request_uri"] == LINE and line["request_method"] == "POST"
        by_connection.setdefault(int(line["connection"]), []).append(line)
    assert len(by_connection) == len(SCENARIOS) * 3
    # what should be flagged: the last request of each connection, with its scenario's flag
    expected: dict[str, str] = {}
    connections = iter(sorted(by_connection))
    for scenario, (kind, flag) in SCENARIOS.items():
        for position in (1, 2, 3):
            lines = sorted(by_connection[next(connections)], key=lambda x: x["connection_requests"])
            assert [x["connection_requests"] for x in lines] == list(range(1, position + 1))
            expected[lines[-1]["request_id"]] = flag
            kinds = {e.kind for e in cut_events() if e.connection == lines[-1]["connection"]}
            assert kind in kinds, (scenario, kinds, text)
    requests = {line["request_id"] for line in access}

    def check(name: str, found: dict[str, set[str]]) -> None:
        assert requests <= set(found), (name, requests - set(found))  # every request came
        got = {rid: {f for f in flags if f.startswith("truncated:")}
               for rid, flags in found.items() if rid in requests}
        for rid in requests:
            truncated = got.get(rid, set())
            if rid in expected:
                assert expected[rid] in truncated, (name, rid, found)
            else:  # an earlier request of the connection: same line, often the same second
                assert not truncated, (name, rid, truncated, text)

    # replay, both file orders
    for files in ([paths.error_log, paths.access_log], [paths.access_log, paths.error_log]):
        out = io.BytesIO()
        replay(files, settings=load_settings(), out=out, err=io.StringIO())
        found: dict[str, set[str]] = {}
        for raw in out.getvalue().splitlines():
            record = orjson.loads(raw)
            found.setdefault(record["trace_id"], set()).update(record["flags"])
        check(f"replay {files[0].name} first", found)

    # the service's pipeline, the logs as the collector sends them (error log first, or not)
    access_bodies = paths.access_log.read_text().splitlines()
    error_bodies = paths.error_log.read_text().splitlines()
    now = int((max(float(x["msec"]) for x in access) + 1) * 1e9)
    for order in (("nginx_error", "nginx_access"), ("nginx_access", "nginx_error")):
        p = Pipeline(load_settings())
        found = {}
        for source in order:
            bodies = error_bodies if source == "nginx_error" else access_bodies
            _spans_flags(p.process_logs(logs_request(*bodies, source=source), now)[0], found)
        _spans_flags(p.process_logs(logs_request(), now + 60 * 10**9)[0], found)
        check(f"pipeline {order[0]} first", found)
    assert json.dumps(read_json_lines(paths.access_log))  # the log stayed readable JSON
    check("collector → serve", served(tmp_path, paths, set(expected)))


def served(tmp_path: Path, paths: NginxPaths, cut: set[str]) -> dict[str, set[str]]:
    """The flags `serve` sent per trace, the logs read by the collector with the shipped
    config (a cut reported under its request's trace counts for the request)."""
    downstream = RecordingDownstream()
    downstream.server.start()
    otlp = free_port()
    serve = ManagedProcess(
        "serve", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
        env={"AUDIT_GUARD_ERROR_JOIN_WINDOW_S": "3",
             "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp}",
             "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
             "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}"}).start()
    found: dict[str, set[str]] = {}

    def collect() -> dict[str, set[str]]:
        found.clear()
        for request in list(downstream.requests):
            _spans_flags(request.SerializeToString(), found)
        return found

    try:
        serve.wait_ready(lambda: port_open(otlp), 60)
        collector, _ = start_collector(
            tmp_path / "collector", access_log=paths.access_log,
            nginx_error_log=paths.error_log, processor_endpoint=f"127.0.0.1:{otlp}",
            traces_endpoint=f"127.0.0.1:{free_port()}", vts_target=f"127.0.0.1:{free_port()}")
        try:
            wait_until(lambda: all(any(f.startswith("truncated:") for f in collect().get(t, ()))
                                   for t in cut), 90, "every cut flagged by serve")
            time.sleep(6)  # past the join window: anything flagged wrongly shows up by now
        finally:
            collector.stop()
    finally:
        serve.stop()
        downstream.server.stop(None)
    return collect()
