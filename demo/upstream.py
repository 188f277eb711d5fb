"""A stand-in for Dify's service API: the app behind nginx in the demo stack and the tests.

Stdlib only, so it runs wherever Python does. It answers the service-API routes the audit cares
about with Dify-shaped JSON (or SSE when streaming), reports the identity it attributed in the
response headers X-Audit-User-Id / X-Audit-App-Id (which nginx logs and hides), and writes one
Dify-style JSON log line per request to its app log, flushed at once: the point of the demo is
that nothing sits in a buffer when a process dies.

Identity, as Dify derives it: the end user from the JSON body field `user` (or query `user=`),
default "demo-user"; the app from `Authorization: Bearer app-<appid>` (default "demo").

Per-request switches (query parameters, so one test can mix normal and faulty requests):
  status=NNN   answer with that status, 200-599 (a Dify-style error body for >= 400)
  cut=1        promise Content-Length 100000, send 30000 body bytes, close the socket; with
               response_mode=streaming: send some SSE events, close without the last chunk
  anonymous=1  omit X-Audit-User-Id (nginx logs an empty user_id)
  size=N       pad the JSON body to N bytes (when N exceeds the natural size)
  noaudit=1    write no app-log line (simulates a dropped audit line)

The answers themselves (routes, error bodies, SSE, the cut responses):
demo.upstream_answers.

Run: python -m demo.upstream --port N [--host ADDR] [--log FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from .upstream_answers import CUT_PROMISED, CUT_SENT, ResponseWriter, error_body, route

__all__ = [
    "CUT_PROMISED",
    "CUT_SENT",
    "AppLog",
    "DemoHandler",
    "DemoServer",
    "main",
    "serve",
]

DEFAULT_USER = "demo-user"
DEFAULT_APP = "demo"
TENANT = "demo-tenant"

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _now_iso() -> str:
    # Dify's JSON formatter: ISO-8601 UTC with milliseconds and a trailing Z.
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AppLog:
    """Dify-style JSON lines, one per request; each line is flushed before write() returns."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if path is not None:
            # Line-buffered append: a line is on disk (in the page cache) as soon as it is
            # complete, and O_APPEND keeps lines from concurrent handler threads whole.
            self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        # Dify's `caller` is file:line of the logging call; here that is our caller's frame.
        caller_line = sys._getframe(1).f_lineno
        line = {
            "ts": _now_iso(),
            "severity": "INFO",
            "service": "api",
            "caller": f"demo/upstream.py:{caller_line}",
            **record,
        }
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class DemoServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the app log; daemon threads never block shutdown."""

    daemon_threads = True

    def __init__(self, port: int, app_log: AppLog, host: str = "127.0.0.1") -> None:
        self.app_log = app_log
        super().__init__((host, port), DemoHandler)

    def server_close(self) -> None:
        super().server_close()
        self.app_log.close()


class DemoHandler(ResponseWriter):
    # HTTP/1.1 so chunked SSE and keep-alive work as with Dify's gunicorn.
    protocol_version = "HTTP/1.1"
    server_version = "dify-demo/0.1"
    # An idle keep-alive client must not pin a thread forever.
    timeout = 30
    server: DemoServer

    # -- request parsing ------------------------------------------------------------------

    def _read_body(self) -> bytes:
        # Read the whole body before answering: closing a socket with unread input makes the
        # kernel send RST, and the cut test needs nginx to see a clean early FIN instead.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _trace_id(self) -> tuple[str, str | None]:
        """Trace id from traceparent, else X-Request-ID; a fresh one when neither is usable.

        A fresh id (rather than none) is what Dify does when it starts its own trace; the
        processor then sees an app line that joins no access line, which is the finding.
        """
        traceparent = self.headers.get("traceparent")
        if traceparent:
            m = _TRACEPARENT.match(traceparent.strip().lower())
            if m:
                return m.group(1), traceparent
        request_id = (self.headers.get("X-Request-ID") or "").strip().lower()
        if _HEX32.match(request_id):
            return request_id, traceparent
        return secrets.token_hex(16), traceparent

    def _app_id(self) -> str:
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip().startswith("app-"):
            return token.strip()[len("app-") :] or DEFAULT_APP
        return DEFAULT_APP

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body, bad_json = self._json_body()

        user = body.get("user") if isinstance(body.get("user"), str) else None
        user_id = user or query.get("user") or DEFAULT_USER
        app_id = self._app_id()
        trace_id, traceparent = self._trace_id()
        streaming = body.get("response_mode") == "streaming"

        status, payload = route(self.command, url.path, body, user_id, app_id)
        if bad_json:
            status, payload = 400, error_body(400, "Invalid JSON body.")
        forced = query.get("status", "")
        # 1xx are interim responses, not answers: only final statuses can be forced.
        if forced.isdigit() and 200 <= int(forced) <= 599:
            status = int(forced)
            if status >= 400:
                payload = error_body(status, f"Forced status {status} (demo switch).")
        if status >= 400:
            streaming = False

        identity_headers = [("X-Audit-App-Id", app_id)]
        if query.get("anonymous") != "1":
            identity_headers.append(("X-Audit-User-Id", user_id))
        cut = query.get("cut") == "1"

        # Dify logs the request (ENABLE_REQUEST_LOGGING) when the view has returned its response,
        # i.e. BEFORE the WSGI server writes it out - for streams, before the first event. So
        # the app line is written first here too: a cut or unsent response still has a
        # normal-looking app line, which is exactly what the processor has to cope with.
        if query.get("noaudit") != "1":
            duration_ms = (time.monotonic() - started) * 1000
            self._audit_line(url.path, status, duration_ms, trace_id, traceparent, user_id, app_id)

        try:
            if streaming:
                self._send_stream(status, identity_headers, cut)
            else:
                self._send_json(status, payload, identity_headers, cut, query.get("size"))
        except (BrokenPipeError, ConnectionResetError):
            # The client (nginx) went away mid-response: normal for aborts, not a server error.
            self.close_connection = True

    def _json_body(self) -> tuple[dict[str, Any], bool]:
        """(the body's JSON object, or {} when it holds none; whether it was not JSON)."""
        raw = self._read_body()
        if raw.strip():
            try:
                parsed = json.loads(raw)
                return (parsed if isinstance(parsed, dict) else {}), False
            except ValueError:
                return {}, True
        return {}, False

    def _audit_line(self, path: str, status: int, duration_ms: float, trace_id: str,
                    traceparent: str | None, user_id: str, app_id: str) -> None:
        record = {
            # Dify's request-logging message: METHOD path status duration_ms trace_id
            "message": f"{self.command} {path} {status} {duration_ms:.1f} {trace_id}",
            "trace_id": trace_id,
            # A fresh span id: the app's request span, child of nginx's (traceparent).
            "span_id": secrets.token_hex(8),
            "identity": {"tenant_id": TENANT, "user_id": user_id, "user_type": "end_user"},
            "attributes": {
                "app_id": app_id,
                "path": path,
                "method": self.command,
                "status": status,
                # Not a Dify key: lets tests check what nginx actually forwarded.
                "traceparent": traceparent,
            },
        }
        self.server.app_log.write(record)  # one line: `caller` names this line

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Per-request lines on stderr would duplicate nginx's access log and the app log;
        # errors still go through log_error → log_message → stderr.
        pass



def serve(port: int, log_path: Path | None = None) -> DemoServer:
    """Start the upstream on 127.0.0.1:port (0 = any free port) in a daemon thread.

    The actual port is `server.server_address[1]`. Stop it with `server.shutdown()` followed
    by `server.server_close()` (which also closes the app log).
    """
    server = DemoServer(port, AppLog(log_path))
    thread = threading.Thread(target=server.serve_forever, name=f"upstream-{port}", daemon=True)
    thread.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (0.0.0.0 inside a container network)")
    parser.add_argument("--log", type=Path, default=None, help="app log file (JSON lines)")
    args = parser.parse_args(argv)
    server = DemoServer(args.port, AppLog(args.log), host=args.host)
    print(f"upstream listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
