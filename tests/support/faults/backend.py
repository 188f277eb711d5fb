"""The recording OTLP trace backend of the fault matrix: a real gRPC TraceService server in its
own process, so a row can stop it (port closed) and start it again.

Every accepted Export request is appended to the record file, before the answer, as a 4-byte
big-endian length and the request's serialized bytes; a restart appends to the same file, so
nothing accepted is forgotten. Like Jaeger or Tempo it refuses requests over 4 MiB (gRPC's
`grpc.max_receive_message_length`; gRPC itself answers RESOURCE_EXHAUSTED).

Steering: a JSON control file, read at every Export (a missing file means {"mode": "ok"}):
    {"mode": "ok"}
    {"mode": "status", "code": "UNAVAILABLE", "until": <epoch s>}   abort with that code
    {"mode": "partial", "until": <epoch s>}   OK with partial_success rejecting every span
After `until` the backend accepts again on its own. `Control` writes the file atomically.

Run: python -m tests.support.faults.backend --port N --record FILE --control FILE [--max-recv-bytes
N]
`read_records` decodes the record file (the harness tails it while a row runs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["MAX_RECV_BYTES", "Control", "RecordReader", "main"]

MAX_RECV_BYTES = 4 * 1024 * 1024
_LEN = struct.Struct(">I")
_OK = ExportTraceServiceResponse().SerializeToString()
_EXPORT_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class Control:
    """Writes the backend's control file (atomically: a reader never sees half a file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, state: dict[str, object]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)

    def ok(self) -> None:
        self._write({"mode": "ok"})

    def status(self, code: str, seconds: float) -> None:
        if code not in grpc.StatusCode.__members__:
            raise ValueError(f"unknown gRPC status code {code!r}")
        self._write({"mode": "status", "code": code, "until": time.time() + seconds})

    def partial(self, seconds: float) -> None:
        self._write({"mode": "partial", "until": time.time() + seconds})


class _Backend:
    def __init__(self, record: Path, control: Path) -> None:
        self._control = control
        self._lock = threading.Lock()
        self._out = open(record, "ab")  # noqa: SIM115 - closed in close()

    def _state(self) -> dict[str, object]:
        try:
            state = json.loads(self._control.read_text())
        except (OSError, ValueError):
            return {"mode": "ok"}
        until = state.get("until")
        if isinstance(until, int | float) and time.time() >= until:
            return {"mode": "ok"}
        return state

    def export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        state = self._state()
        if state.get("mode") == "status":
            context.abort(grpc.StatusCode[str(state["code"])], "fault matrix: refusing on purpose")
        if state.get("mode") == "partial":
            parsed = ExportTraceServiceRequest.FromString(request)
            spans = sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans)
            resp = ExportTraceServiceResponse()
            resp.partial_success.rejected_spans = spans
            resp.partial_success.error_message = "fault matrix: rejecting every span on purpose"
            return resp.SerializeToString()
        with self._lock:
            self._out.write(_LEN.pack(len(request)) + request)
            self._out.flush()
        return _OK

    def close(self) -> None:
        with self._lock:
            self._out.close()


def serve(port: int, record: Path, control: Path, max_recv_bytes: int) -> None:
    backend = _Backend(record, control)
    handler = grpc.method_handlers_generic_handler(_EXPORT_SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(
            backend.export, request_deserializer=None, response_serializer=None),
    })
    server = grpc.server(futures.ThreadPoolExecutor(8), options=[
        ("grpc.max_receive_message_length", max_recv_bytes),
        ("grpc.so_reuseport", 0),  # a second backend on the same port must fail, not share it
    ])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"recording backend on 127.0.0.1:{port} → {record}", flush=True)
    done.wait()
    server.stop(2).wait()
    backend.close()


class RecordReader:
    """Tails the record file: the requests accepted so far, decoded once each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_requests(self) -> list[ExportTraceServiceRequest]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        out, pos = [], 0
        while pos + _LEN.size <= len(data):
            (size,) = _LEN.unpack_from(data, pos)
            if pos + _LEN.size + size > len(data):
                break  # being written, or cut by a kill: read it next time (or never)
            out.append(ExportTraceServiceRequest.FromString(
                data[pos + _LEN.size: pos + _LEN.size + size]))
            pos += _LEN.size + size
        self._offset += pos
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--max-recv-bytes", type=int, default=MAX_RECV_BYTES)
    args = parser.parse_args(argv)
    serve(args.port, args.record, args.control, args.max_recv_bytes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
