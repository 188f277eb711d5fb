"""Running the admin app: uvicorn in a daemon thread on a socket bound up front.

The socket is bound in the caller's thread before anything else starts, so a taken or invalid
`admin.listen` stops `serve` at start-up with a clear message instead of a log line from a
background thread while the service runs on without health checks or metrics.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["AdminServer", "bind_admin_socket"]


def bind_admin_socket(listen: str) -> socket.socket:
    """A listening TCP socket on host:port ([v6]:port too); raises OSError."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As every server does: a restart must not wait for TIME_WAIT of the previous run.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class AdminServer:
    """uvicorn serving `app` on an already bound socket, in a daemon thread."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                        name="admin-http", daemon=True)

    def start(self, timeout: float = 10.0) -> AdminServer:
        """Start and wait until uvicorn serves; raises RuntimeError if it does not."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the admin HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
