"""TEST DOUBLE of Dify's Flask app, for running the overlay's identity patch
(deploy/dify/api/audit_guard_gunicorn.py) in real gunicorn: `gunicorn
tests.support.dify_flask_double:app`. Dify itself needs PostgreSQL, Redis and its image.

It logs users in exactly as Dify 1.13.3 does (api/controllers/service_api/wraps.py):
`current_app.login_manager._update_request_context_with_user(user)` with an EndUser (service
API with `user`) or an Account (console; service API without `user`: the workspace owner), and
a request loader that finds nobody for anything else. Routes:

    POST /v1/chat-messages            Bearer app-key, JSON `user` → EndUser of the key's app
    GET  /v1/parameters               Bearer app-key, no user → the owner's Account
    GET  /console/api/apps/<app_id>/… Bearer console session → Account, the URL's app
    GET  /v1/forged                   the view sets X-Audit-User-Id itself (must not survive)
    GET  /v1/boom                     the view raises (Flask's 500 answer)
    anything without a known key      401, nobody logged in
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from flask_login import LoginManager

__all__ = ["APP_KEY", "APP_ID", "CONSOLE_TOKEN", "ACCOUNT_ID", "OWNER_ID", "app"]

APP_KEY, APP_ID = "app-k3yChat", "6f1c2a4e-0b7d-4c55-9a0e-3f2b1d9e8a71"
CONSOLE_TOKEN, ACCOUNT_ID = "console-session-ops", "0c8e3f5a-9d21-4b6e-a7f4-2e5d8c1b9a03"
OWNER_ID = "7a1e9c3d-5b2f-4e80-9c6a-d4f3b2a1e0c9"

app = Flask(__name__)
login_manager = LoginManager(app)


@login_manager.request_loader
def _nobody(_request: Any) -> None:
    return None


@dataclass
class _User:
    id: str
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        return self.id


@dataclass
class EndUser(_User):  # models.model.EndUser: session_id is the API caller's `user`
    session_id: str = ""
    app_id: str = ""


@dataclass
class Account(_User):  # models.Account
    pass


def _token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


def _login(user: _User) -> None:
    current_app.login_manager._update_request_context_with_user(user)  # type: ignore[attr-defined]


def _unauthorized() -> tuple[Response, int]:
    return jsonify(code="unauthorized", message="Access token is invalid", status=401), 401


@app.post("/v1/chat-messages")
def chat_messages() -> Any:
    if _token() != APP_KEY:
        return _unauthorized()
    _login(EndUser(id="eu-0001", session_id=str(request.get_json()["user"]), app_id=APP_ID))
    return jsonify(event="message", answer="ok")


@app.get("/v1/parameters")
def parameters() -> Any:
    if _token() != APP_KEY:
        return _unauthorized()
    _login(Account(id=OWNER_ID))
    return jsonify(user_input_form=[])


@app.get("/console/api/apps/<uuid:app_id>/workflows/draft")
def draft(app_id: Any) -> Any:
    if _token() != CONSOLE_TOKEN:
        return _unauthorized()
    _login(Account(id=ACCOUNT_ID))
    return jsonify(graph={})


@app.get("/v1/forged")
def forged() -> Any:
    return jsonify(ok=True), 200, {"X-Audit-User-Id": "someone-else"}


@app.get("/v1/boom")
def boom() -> Any:
    _login(Account(id=ACCOUNT_ID))
    raise RuntimeError("a view that fails")
