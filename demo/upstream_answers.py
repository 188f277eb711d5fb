"""What the demo upstream (demo.upstream) answers: Dify-shaped JSON per service-API
route, Dify-style error bodies, SSE streams, and the cut responses (a broken Content-Length
promise, a stream that dies mid-way) that the audit must catch.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

# The cut response: what the header promises vs what is actually sent before the close.
CUT_PROMISED = 100_000
CUT_SENT = 30_000

_DOCUMENTS = re.compile(r"^/v1/datasets/[^/]+/documents(?:/.*)?$")

_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "too_many_requests",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"code": _REASONS.get(status, "error"), "message": message, "status": status}


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def route(
    method: str, path: str, body: dict[str, Any], user_id: str, app_id: str
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a Dify service-API route, as Dify answers it."""
    if path in ("/v1/chat-messages", "/v1/completion-messages"):
        if method != "POST":
            return 405, error_body(405, "The method is not allowed for the requested URL.")
        answer = {
            "event": "message",
            "task_id": str(uuid.uuid4()),
            "id": str(uuid.uuid4()),
            "message_id": str(uuid.uuid4()),
            "mode": "chat" if path == "/v1/chat-messages" else "completion",
            "answer": f"Echo: {body.get('query', '')}",
            "metadata": {"usage": {"total_tokens": 12}},
            "created_at": int(time.time()),
        }
        if path == "/v1/chat-messages":
            answer["conversation_id"] = body.get("conversation_id") or str(uuid.uuid4())
        return 200, answer
    if path == "/v1/datasets":
        if method != "GET":
            return 405, error_body(405, "The method is not allowed for the requested URL.")
        return 200, {
            "data": [{"id": "ds-1", "name": "Demo"}],
            "has_more": False,
            "limit": 20,
            "total": 1,
            "page": 1,
        }
    if _DOCUMENTS.match(path):
        if method not in ("GET", "POST", "DELETE"):
            return 405, error_body(405, "The method is not allowed for the requested URL.")
        if method == "DELETE":
            return 200, {"result": "success"}
        return 200, {"data": [], "has_more": False, "limit": 20, "total": 0, "page": 1}
    if path == "/v1/model-configs":
        if method not in ("GET", "PUT", "POST"):
            return 405, error_body(405, "The method is not allowed for the requested URL.")
        return 200, {
            "app_id": app_id,
            "model": {"provider": "demo", "name": "demo-model"},
            "updated_by": user_id,
        }
    if path == "/v1/parameters":
        if method != "GET":
            return 405, error_body(405, "The method is not allowed for the requested URL.")
        return 200, {
            "opening_statement": "",
            "user_input_form": [],
            "file_upload": {"enabled": False},
        }
    return 404, error_body(404, "The requested URL was not found on the server.")



class ResponseWriter(BaseHTTPRequestHandler):
    """The handler's ways of answering: JSON (padded or cut on request) and SSE streams."""

    def _send_json(
        self,
        status: int,
        payload: dict[str, Any],
        extra: list[tuple[str, str]],
        cut: bool,
        size: str | None,
    ) -> None:
        data = json.dumps(payload).encode()
        if size and size.isdigit() and int(size) > len(data) + 16:
            # `, "padding": ""` is 15 bytes; the x's bring the body to exactly `size`.
            payload = {**payload, "padding": "x" * (int(size) - len(data) - 15)}
            data = json.dumps(payload).encode()
        if cut:
            # Fixed-length body, broken promise: the header says CUT_PROMISED bytes.
            data = (data + b" " * CUT_PROMISED)[:CUT_PROMISED]
        self.send_response(status)
        if status in (204, 304):
            # These statuses have no body by definition; sending one would desync keep-alive.
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            return
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        if cut:
            self.wfile.write(data[:CUT_SENT])
            self._abort()
            return
        self.wfile.write(data)

    def _send_stream(self, status: int, extra: list[tuple[str, str]], cut: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        message_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
        conversation_id = str(uuid.uuid4())
        words = ["Hello", " from", " the", " demo", " upstream", "."]
        for i, word in enumerate(words):
            if cut and i == len(words) // 2:
                # Mid-stream death: no message_end, no terminating zero-length chunk.
                self._abort()
                return
            self._chunk(
                _sse(
                    {
                        "event": "message",
                        "task_id": task_id,
                        "message_id": message_id,
                        "conversation_id": conversation_id,
                        "answer": word,
                        "created_at": int(time.time()),
                    }
                )
            )
            time.sleep(0.01)  # several TCP writes, as a real token stream
        self._chunk(
            _sse(
                {
                    "event": "message_end",
                    "task_id": task_id,
                    "message_id": message_id,
                    "conversation_id": conversation_id,
                    "metadata": {"usage": {"total_tokens": len(words)}},
                }
            )
        )
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _abort(self) -> None:
        """Close the connection now, with what was written so far on the wire (a clean FIN)."""
        self.wfile.flush()
        self.close_connection = True
        # The peer may already be gone; the close is best effort either way.
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
