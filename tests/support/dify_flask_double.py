"""TEST DOUBLE of Dify's Flask app, for running the overlay's identity patch
(deploy/dify/api/audit_guard_gunicorn.py) in real gunicorn: `gunicorn
tests.support.dify_flask_double:app`. Dify itself needs PostgreSQL, Redis and its image.

It authenticates as Dify 1.13.3 does, down to where the functions live, because the patch
wraps two of them by module and name:
- `controllers.service_api.wraps.validate_and_get_api_token(scope)` (the API key → a token with
  the app's id), called by `validate_app_token`, which logs in an EndUser when the request has a
  `user`, else the workspace owner's Account
  (`current_app.login_manager._update_request_context_with_user`);
- `controllers.web.wraps.decode_jwt_token()` (the web app's passport → (app, EndUser)), called
  by `validate_jwt_token`, which logs nobody in;
- the console logs the Account in; a request loader finds nobody otherwise.
Dify's decorators look these functions up in their module at call time (a global name), so do
these (an attribute of the registered module).

    POST /v1/chat-messages            Bearer app-key, JSON `user` → EndUser of the key's app
    GET  /v1/parameters               Bearer app-key, no user → the owner's Account
    GET  /api/parameters              Bearer passport (web app) → its EndUser and app
    GET  /console/api/apps/<app_id>/… Bearer console session → Account, the URL's app
    GET  /v1/forged                   the view sets X-Audit-User-Id itself (must not survive)
    GET  /v1/boom                     the view raises (Flask's 500 answer)
    anything without a known key      401, nobody logged in
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from types import ModuleType
from typing import Any

from flask import Flask, abort, current_app, jsonify, request
from flask_login import LoginManager

__all__ = ["ACCOUNT_ID", "APP_ID", "APP_KEY", "CONSOLE_TOKEN", "OWNER_ID", "PASSPORT",
           "WEB_APP_ID", "WEB_SESSION", "app"]

APP_KEY, APP_ID = "app-k3yChat", "6f1c2a4e-0b7d-4c55-9a0e-3f2b1d9e8a71"
CONSOLE_TOKEN, ACCOUNT_ID = "console-session-ops", "0c8e3f5a-9d21-4b6e-a7f4-2e5d8c1b9a03"
OWNER_ID = "7a1e9c3d-5b2f-4e80-9c6a-d4f3b2a1e0c9"
PASSPORT, WEB_APP_ID = "passport-web-1", "b2d94e1f-6a3c-4f08-8e27-51c0a9d3f6b4"
WEB_SESSION = "4f6d1c2e-8a9b-4e3f-b1a2-c3d4e5f60718"  # the web app's anonymous end user

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


@dataclass
class App:  # models.model.App
    id: str


@dataclass
class ApiToken:  # models.model.ApiToken (the cached form Dify returns)
    app_id: str


def _module(name: str) -> ModuleType:
    """Register `name` (and its parent packages) in sys.modules, as Dify's import would."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), ModuleType(".".join(parts[:i])))
    return sys.modules[name]


def _token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


def _validate_and_get_api_token(scope: str | None = None) -> ApiToken:
    if _token() != APP_KEY:
        abort(401, "Access token is invalid")  # werkzeug's Unauthorized, as Dify raises
    return ApiToken(app_id=APP_ID)


def _decode_jwt_token() -> tuple[App, EndUser]:
    if _token() != PASSPORT:
        abort(401, "App token is missing.")
    return App(WEB_APP_ID), EndUser(id="eu-web-1", session_id=WEB_SESSION, app_id=WEB_APP_ID)


service_api_wraps = _module("controllers.service_api.wraps")
service_api_wraps.validate_and_get_api_token = _validate_and_get_api_token  # type: ignore[attr-defined]
web_wraps = _module("controllers.web.wraps")
web_wraps.decode_jwt_token = _decode_jwt_token  # type: ignore[attr-defined]


def _login(user: _User) -> None:
    current_app.login_manager._update_request_context_with_user(user)  # type: ignore[attr-defined]


def validate_app_token(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def decorated(*args: Any, **kwargs: Any) -> Any:
        api_token = service_api_wraps.validate_and_get_api_token("app")
        body = request.get_json(silent=True) or {}
        user = body.get("user") if request.method == "POST" else request.args.get("user")
        if user:
            _login(EndUser(id="eu-0001", session_id=str(user), app_id=api_token.app_id))
        else:
            _login(Account(id=OWNER_ID))
        return view(*args, **kwargs)

    return decorated


def validate_jwt_token(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def decorated(*args: Any, **kwargs: Any) -> Any:
        app_model, end_user = web_wraps.decode_jwt_token()
        return view(app_model, end_user, *args, **kwargs)

    return decorated


@app.post("/v1/chat-messages")
@validate_app_token
def chat_messages() -> Any:
    return jsonify(event="message", answer="ok")


@app.get("/v1/parameters")
@validate_app_token
def parameters() -> Any:
    return jsonify(user_input_form=[])


@app.get("/api/parameters")
@validate_jwt_token
def web_parameters(app_model: App, end_user: EndUser) -> Any:
    return jsonify(user_input_form=[])


@app.get("/console/api/apps/<uuid:app_id>/workflows/draft")
def draft(app_id: Any) -> Any:
    if _token() != CONSOLE_TOKEN:
        abort(401, "Invalid session")
    _login(Account(id=ACCOUNT_ID))
    return jsonify(graph={})


@app.get("/v1/forged")
def forged() -> Any:
    return jsonify(ok=True), 200, {"X-Audit-User-Id": "someone-else"}


@app.get("/v1/boom")
def boom() -> Any:
    _login(Account(id=ACCOUNT_ID))
    raise RuntimeError("a view that fails")
