"""Steady audited traffic against nginx on loopback: bounded in count and in time.

Several threads, each with one keep-alive connection (http.client), share one schedule: request
k is due at start + k / rate, so the load is even across the row whatever the fault does to
latency. Paths are Dify's audited service-API and console routes (processor/audit_guard/routes.py).
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Traffic", "TrafficResult"]

# (method, path, body): chat dominates, as in a Dify deployment.
_REQUESTS: tuple[tuple[str, str, bool], ...] = (
    ("POST", "/v1/chat-messages", True),
    ("POST", "/v1/chat-messages", True),
    ("POST", "/v1/completion-messages", True),
    ("GET", "/v1/datasets", False),
    ("GET", "/v1/parameters", False),
    ("GET", "/console/api/apps", False),
)


@dataclass
class TrafficResult:
    sent: int = 0  # answered with any HTTP status
    failed: int = 0  # connection errors (no answer)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


class Traffic:
    """`start()` sends `requests` requests at `rate` per second in a background thread pool;
    `wait()` returns the result. Stops at `requests` or after `max_seconds`, whichever first."""

    def __init__(self, port: int, requests: int, rate: float, threads: int = 4,
                 max_seconds: float | None = None) -> None:
        self.port, self.requests, self.rate = port, requests, rate
        self.max_seconds = max_seconds or requests / rate * 2 + 30
        self.result = TrafficResult()
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"traffic-{i}",
                                          daemon=True) for i in range(threads)]
        self._start = 0.0

    @property
    def answered(self) -> int:
        return self.result.sent

    @property
    def finished(self) -> bool:
        return self._start > 0 and not any(t.is_alive() for t in self._threads)

    def start(self) -> Traffic:
        self._start = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> TrafficResult:
        for t in self._threads:
            t.join()
        self.result.seconds = time.monotonic() - self._start
        return self.result

    def _run(self, worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        deadline = self._start + self.max_seconds
        try:
            while not self._stop.is_set():
                k = next(self._next)
                if k >= self.requests:
                    return
                due = self._start + k / self.rate
                if due > deadline or self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                status = self._send(conn, k)
                with self._lock:
                    if status is None:
                        self.result.failed += 1
                    else:
                        self.result.sent += 1
                        self.result.statuses[status] = self.result.statuses.get(status, 0) + 1
        finally:
            conn.close()

    def _send(self, conn: http.client.HTTPConnection, k: int) -> int | None:
        method, path, has_body = _REQUESTS[k % len(_REQUESTS)]
        headers = {"Authorization": f"Bearer app-fault{k % 5}",
                   "User-Agent": "fault-matrix/1.0"}
        body = None
        if has_body:
            body = json.dumps({"query": f"q{k}", "user": f"user-{k % 50}",
                               "response_mode": "blocking", "inputs": {}}).encode()
            headers["Content-Type"] = "application/json"
        else:
            path += f"?user=user-{k % 50}"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            conn.close()  # reconnects on the next request
            return None
