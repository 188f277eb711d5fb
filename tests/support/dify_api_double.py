"""TEST DOUBLE for Dify's API server (`api:5001`) with audit-guard's identity patch: Dify
itself cannot run here (PostgreSQL, Redis, its images), so this stands in for it.

What it copies from Dify 1.13.3, and what is real:
- authentication as Dify does it (api/controllers/service_api/wraps.py, web/wraps.py): the
  service API reads `Authorization: Bearer app-…`, the key names the app; the `user` of the JSON
  body (POST) or the query (GET) names the end user; no `user` logs in the workspace owner's
  Account. A web app's passport names its app and (anonymous) end user; the console's session
  names an Account and the URL its app; an unknown key is answered 401 with Dify's error body;
- the identity headers come from the REAL patch: `audit_identity()` of
  deploy/dify/api/audit_guard_gunicorn.py, given what the patch sees in Dify (the logged-in
  user, the passport's end user, the key's app) as objects shaped like Dify's EndUser
  (`session_id`, `app_id`) and Account (`id`), and the URL's view arguments (the gunicorn side
  of the patch runs in tests/unit/deploy/test_dify_api_patch.py);
- a request carrying `X-Test-Double-Stock-Dify: 1` is answered like an unpatched Dify: the
  same answer, no identity headers.

Every request's headers are kept (`seen`), to check what nginx sent upstream (traceparent).
With `app_log`, every request also gets the line Dify writes with ENABLE_REQUEST_LOGGING=true,
LOG_OUTPUT_FORMAT=json and ENABLE_OTEL=true (extensions/ext_request_logging.py,
core/logging/structured_formatter.py and filters.py): its Flask server span continues nginx's
`traceparent`, and `identity` is the logged-in user only (Dify's IdentityContextFilter reads
`current_user`: nobody for a web app's passport or a refused request).
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from demo.procs import repo_root

__all__ = ["APP_KEYS", "CONSOLE_SESSIONS", "OWNER", "PASSPORTS", "STOCK_HEADER", "TENANT",
           "DifyApiDouble", "EndUser", "load_patch"]

PATCH = repo_root() / "deploy" / "dify" / "api" / "audit_guard_gunicorn.py"
# API key → app id (Dify: api_tokens.app_id), console session → account id.
APP_KEYS = {"app-k3yChat": "6f1c2a4e-0b7d-4c55-9a0e-3f2b1d9e8a71",
            "app-k3yFlow": "b2d94e1f-6a3c-4f08-8e27-51c0a9d3f6b4"}
CONSOLE_SESSIONS = {"console-session-ops": "0c8e3f5a-9d21-4b6e-a7f4-2e5d8c1b9a03"}
# web app passport → (app id, the anonymous end user's session id)
PASSPORTS = {"passport-web-1": ("b2d94e1f-6a3c-4f08-8e27-51c0a9d3f6b4",
                                "4f6d1c2e-8a9b-4e3f-b1a2-c3d4e5f60718")}
STOCK_HEADER = "X-Test-Double-Stock-Dify"
OWNER = "7a1e9c3d-5b2f-4e80-9c6a-d4f3b2a1e0c9"  # the workspace owner's account id
_CONSOLE_APP = re.compile(r"^/console/api/apps/(?P<app_id>[0-9a-f-]{36})(?:/|$)")


def load_patch(path: Path = PATCH) -> ModuleType:
    """The patch module, loaded from its file (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("audit_guard_dify_patch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TENANT = "e8c1d2f3-4a5b-4c6d-8e9f-a0b1c2d3e4f5"


@dataclass(frozen=True)
class EndUser:  # the attributes of Dify's models.model.EndUser the patch reads
    session_id: str
    app_id: str

    @property
    def id(self) -> str:  # Dify's own end-user id (end_users.id), what its logs name
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.app_id}/{self.session_id}"))


@dataclass(frozen=True)
class Account:  # Dify's models.Account
    id: str


class _Handler(BaseHTTPRequestHandler):
    server: DifyApiDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _login(self, body: dict[str, Any]) -> tuple[int, list[Any], dict[str, Any], object]:
        """(status, [logged-in user, passport end user], view args, the key's app) as the patch
        would find them in Dify."""
        url = urlsplit(self.path)
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 401, [], {}, None
        if url.path.startswith("/console/api/"):
            if token not in CONSOLE_SESSIONS:
                return 401, [], {}, None
            console = _CONSOLE_APP.match(url.path)
            view_args = console.groupdict() if console else {}
            return 200, [Account(CONSOLE_SESSIONS[token])], view_args, None
        if url.path.startswith("/api/"):  # web app: the passport, nobody logged in
            if token not in PASSPORTS:
                return 401, [], {}, None
            app_id, session = PASSPORTS[token]
            return 200, [None, EndUser(session, app_id)], {}, None
        if token not in APP_KEYS:
            return 401, [], {}, None
        user = body.get("user") if self.command == "POST" else (
            parse_qs(url.query).get("user", [None])[0])
        if user:
            return 200, [EndUser(str(user), APP_KEYS[token])], {}, APP_KEYS[token]
        return 200, [Account(OWNER)], {}, APP_KEYS[token]  # no user: the owner

    def _request_log(self, status: int, users: list[Any], started: float) -> None:
        """Dify's JSON request-log line for this request (see the module docstring)."""
        parts = self.headers.get("traceparent", "").split("-")
        trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
        path = urlsplit(self.path).path
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        line: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "severity": "INFO", "service": "langgenius/dify", "caller": "ext_request_logging.py:79",
            "message": f"{self.command} {path} {status} {duration_ms} {trace_id}",
        }
        if trace_id:
            line |= {"trace_id": trace_id, "span_id": secrets.token_hex(8)}
        user = users[0] if users else None
        if isinstance(user, EndUser):
            line["identity"] = {"tenant_id": TENANT, "user_id": user.id,
                                "user_type": "service-api"}
        elif isinstance(user, Account):
            line["identity"] = {"tenant_id": TENANT, "user_id": user.id, "user_type": "account"}
        assert self.server.app_log is not None
        with self.server.log_lock, self.server.app_log.open("a") as log:
            log.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _answer(self) -> None:
        started = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers.items())))
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        status, users, view_args, key_app = self._login(body if isinstance(body, dict) else {})
        if status == 401:
            payload = {"code": "unauthorized", "message": "Access token is invalid",
                       "status": 401}
        else:
            payload = {"event": "message", "answer": "ok", "id": "msg-1"}
        data = json.dumps(payload).encode()
        if self.server.app_log is not None:  # Dify logs in request_finished, before the body
            self._request_log(status, users, started)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if not self.headers.get(STOCK_HEADER):
            user_header, app_header = self.server.patch.audit_identity(
                users, view_args, key_app)
            if user_header:
                self.send_header(self.server.patch.USER_HEADER, user_header)
            if app_header:
                self.send_header(self.server.patch.APP_HEADER, app_header)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class DifyApiDouble(ThreadingHTTPServer):
    """`with DifyApiDouble() as api:` serves on 127.0.0.1:<api.port> in a thread."""

    daemon_threads = True

    def __init__(self, app_log: Path | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.app_log = app_log
        self.log_lock = threading.Lock()
        self.patch = load_patch()
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> DifyApiDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
