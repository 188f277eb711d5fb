"""Counter targets are read with limits (issue #13): no redirect is followed, a body over the cap
is refused, a trickling server is cut off at the deadline."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audit_guard.completeness import read_status


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 300_000)
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"Active connections: 1\n")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"Active connections: 1\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_limits(base: str) -> None:
    assert read_status(base + "/ok") == b"Active connections: 1\n"
    with pytest.raises(OSError, match="not followed"):
        read_status(base + "/redirect")
    with pytest.raises(ValueError, match="larger than 100000 bytes"):
        read_status(base + "/big", max_bytes=100_000)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        read_status(base + "/slow", deadline_s=1)
    assert time.monotonic() - started < 2.5
