"""Demo traffic: a burst of Dify-like service-API calls through nginx, some deliberately faulty.

Each request says what audit-guard should find for it (`expect`), so the demo summary and the
end-to-end tests can check every span, not just count them.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DemoRequest", "burst", "send"]


@dataclass(frozen=True)
class DemoRequest:
    method: str
    path: str  # with the query switches of demo.upstream
    user: str = "u1"
    app: str = "a1"
    body: dict[str, object] | None = None
    expect: str = "clean"  # clean | truncated | invalid | missing (no app audit record)


def _scenarios() -> list[DemoRequest]:
    return [
        DemoRequest("POST", "/v1/chat-messages", body={"query": "hi", "response_mode": "blocking"}),
        DemoRequest("GET", "/v1/datasets?page=1"),
        DemoRequest("GET", "/v1/datasets/ds-7/documents", user="u2"),
        DemoRequest("PUT", "/v1/model-configs", body={"model": "gpt-x"}, user="admin"),
        DemoRequest("GET", "/v1/parameters", app="a2"),
        DemoRequest("GET", "/v1/datasets/ds-9/documents?status=403", user="u3"),
        DemoRequest("POST", "/v1/completion-messages?status=500", body={"inputs": {}}),
        DemoRequest("GET", "/v1/datasets/ds-1/documents/doc-2?cut=1", expect="truncated"),
        DemoRequest("POST", "/v1/chat-messages?anonymous=1", body={"query": "who?"},
                    expect="invalid"),
    ]


def burst(total: int) -> list[DemoRequest]:
    """`total` requests cycling through the scenarios (at least one of each)."""
    base = _scenarios()
    total = max(total, len(base))
    return [base[i % len(base)] for i in range(total)]


def send(base_url: str, req: DemoRequest, timeout: float = 10) -> int | None:
    """Send one request; the status, or None when the response was cut (as intended)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    body = dict(req.body or {})
    # Dify takes the end user from the JSON body of a POST/PUT, else from the query string.
    user_in_body = req.body is not None or req.method in ("POST", "PUT")
    if user_in_body:
        body.setdefault("user", req.user)
    sep = "&" if "?" in req.path else "?"
    path = req.path if user_in_body else f"{req.path}{sep}user={req.user}"
    headers = {"Authorization": f"Bearer app-{req.app}", "Content-Type": "application/json"}
    try:
        conn.request(req.method, path, body=json.dumps(body) if body else None, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (http.client.IncompleteRead, ConnectionError, http.client.RemoteDisconnected):
        return None
    finally:
        conn.close()
