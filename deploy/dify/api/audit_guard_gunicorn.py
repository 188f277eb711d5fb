"""audit-guard's patch for Dify's API server: a gunicorn config file that tells nginx who made
each request, in two response headers nginx logs and hides from the client.

    X-Audit-User-Id   end_user:<EndUser.session_id>  service API (the request's `user`) and web
                                                 apps (the passport's end user)
                      account:<Account.id>       console; service-API calls without `user`
                                                 (Dify then logs in the workspace owner)
    X-Audit-App-Id    the console URL's <app_id>, else the end user's app, else the app of the
                      service-API key

Mounted into Dify's `api` container by deploy/dify/docker-compose.audit-guard.yaml and enabled
with `GUNICORN_CMD_ARGS=--config /opt/audit-guard/gunicorn.conf.py`. No Dify file is changed
and no image is rebuilt: this file first runs Dify's own /app/api/gunicorn.conf.py (its gevent
patches for gRPC and psycopg and its post_worker_init hook); then, in each worker, it connects
one receiver to Flask's `request_finished` signal (the response's headers can still change
there) and wraps two of Dify's authentication functions to remember what they found.

Where the identity comes from, read from Dify 1.13.3:
- api/controllers/service_api/wraps.py: `validate_app_token` resolves the `Authorization:
  Bearer app-…` key (`validate_and_get_api_token`, wrapped here: its token's app_id) and, with a
  `user` argument, logs that EndUser in (flask_login's request user); without one it logs in the
  workspace OWNER's Account, so such calls show as `account:<owner id>`: the key made them;
- the console's session logs the Account in;
- api/controllers/web/wraps.py: `decode_jwt_token` (wrapped here) returns the web app's
  (app, EndUser) from the passport without logging anyone in;
- only a user the request already loaded is read (flask `g._login_user`): reading
  `current_user` here could run Dify's loaders (database, JWT) after the view finished.

Nothing here can fail a request or a worker: a Dify function that is not where 1.13.3 has it is
left alone (the worker logs which), any error leaves the headers out; nginx then logs an empty
user_id, which audit-guard flags `missing_field:user_id` on audited paths.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

DIFY_GUNICORN_CONF = os.environ.get("AUDIT_GUARD_DIFY_GUNICORN_CONF", "/app/api/gunicorn.conf.py")
USER_HEADER = "X-Audit-User-Id"
APP_HEADER = "X-Audit-App-Id"
MAX_HEADER_VALUE = 256  # audit-guard flags longer identities invalid anyway
# What the wrapped authentication functions found, kept on flask.g for the request.
_FOUND_USER = "_audit_guard_user"
_FOUND_APP = "_audit_guard_app_id"

# Dify's own settings and hooks first (gunicorn reads one config file: this one replaces the
# default ./gunicorn.conf.py, so it must carry Dify's along).
if os.path.exists(DIFY_GUNICORN_CONF):
    with open(DIFY_GUNICORN_CONF, encoding="utf-8") as _conf:
        exec(compile(_conf.read(), DIFY_GUNICORN_CONF, "exec"))  # noqa: S102

_dify_post_worker_init = globals().get("post_worker_init")


def _header_value(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not text or len(text) > MAX_HEADER_VALUE or not text.isprintable():
        return None
    return text


def _user_id(user: Any) -> str | None:
    session_id = getattr(user, "session_id", None)
    if session_id is not None:  # an EndUser (service API `user`, web app passport)
        return f"end_user:{session_id}"
    account_id = getattr(user, "id", None)  # an Account; flask_login's anonymous user has none
    return f"account:{account_id}" if account_id is not None else None


def audit_identity(
    users: list[Any], view_args: dict[str, Any] | None, key_app_id: object = None
) -> tuple[str | None, str | None]:
    """(user header, app header): the first of `users` with an identity (the logged-in user,
    then the web passport's end user), the app from the URL, that user or the API key."""
    user_id = app_id = None
    for user in users:
        if user is not None and (user_id := _user_id(user)) is not None:
            app_id = getattr(user, "app_id", None)
            break
    if view_args and view_args.get("app_id") is not None:
        app_id = view_args["app_id"]
    if app_id is None:
        app_id = key_app_id
    return _header_value(user_id), _header_value(app_id)


def _set_audit_headers(_sender: object, response: Any = None, **_extra: object) -> None:
    try:
        from flask import g, request

        users = [getattr(g, "_login_user", None), getattr(g, _FOUND_USER, None)]
        user_header, app_header = audit_identity(
            users, request.view_args, getattr(g, _FOUND_APP, None))
        headers = response.headers
        # A header the view set itself must not survive: only this hook speaks for identity.
        headers.pop(USER_HEADER, None)
        headers.pop(APP_HEADER, None)
        if user_header:
            headers[USER_HEADER] = user_header
        if app_header:
            headers[APP_HEADER] = app_header
    except Exception:  # noqa: BLE001 - an audit hint must never break Dify's answer
        return


def _remember(user: Any = None, app_id: object = None) -> None:
    from flask import g

    if user is not None:
        setattr(g, _FOUND_USER, user)
    if app_id is not None:
        setattr(g, _FOUND_APP, app_id)


def _after_passport(result: Any) -> None:
    app_model, end_user = result
    _remember(end_user, getattr(app_model, "id", None))


def _after_api_token(token: Any) -> None:
    _remember(app_id=getattr(token, "app_id", None))


def _wrap(module_name: str, name: str, after: Callable[[Any], None]) -> str | None:
    """Wrap `module.name` (looked up as a global by Dify's decorators at call time) to pass its
    result to `after`; None when done, else why not."""
    module = sys.modules.get(module_name)
    original = getattr(module, name, None)
    if not callable(original):
        return f"{module_name}.{name} not found"

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        with contextlib.suppress(Exception):  # never break Dify's authentication
            after(result)
        return result

    setattr(module, name, wrapper)
    return None


WRAPPED = (
    ("controllers.web.wraps", "decode_jwt_token", _after_passport),
    ("controllers.service_api.wraps", "validate_and_get_api_token", _after_api_token),
)


def post_worker_init(worker: Any) -> None:
    if callable(_dify_post_worker_init):
        _dify_post_worker_init(worker)
    # Imported here: this runs after the gevent worker patched the standard library.
    from flask.signals import request_finished

    request_finished.connect(_set_audit_headers, weak=False)
    for module_name, name, after in WRAPPED:
        problem = _wrap(module_name, name, after)
        if problem:
            worker.log.warning("audit-guard identity patch: %s (a Dify version other than "
                               "1.13): identity from it is not reported", problem)
