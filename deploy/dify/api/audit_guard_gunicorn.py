"""audit-guard's patch for Dify's API server: a gunicorn config file that tells nginx who made
each request, in two response headers nginx logs and hides from the client.

    X-Audit-User-Id   account:<Account.id>       console, and service-API calls without `user`
                      end_user:<EndUser.session_id>  service API (`user` of the request) and
                                                 web apps (the passport's end user)
    X-Audit-App-Id    the app's id: the console URL's <app_id>, else the end user's app

Mounted into Dify's `api` container by deploy/dify/docker-compose.audit-guard.yaml and enabled
with `GUNICORN_CMD_ARGS=--config /opt/audit-guard/gunicorn.conf.py`. No Dify file is changed
and no image is rebuilt: this file first runs Dify's own /app/api/gunicorn.conf.py (its gevent
patches for gRPC and psycopg and its post_worker_init hook), then connects one receiver to
Flask's `request_finished` signal in each worker.

Why these sources, read from Dify 1.13.3 (api/controllers/service_api/wraps.py,
api/core/logging/filters.py):
- the service API's `validate_app_token` resolves the `Authorization: Bearer app-…` key to the
  app and, with a `user` argument, logs the EndUser in (flask_login's request user, whose
  `app_id` is the app); without one it logs in the workspace OWNER's Account, so such calls show
  as `account:<owner id>` here: the API key, not a person, made them;
- the console's JWT session logs the Account in;
- only a user the request already loaded is read (flask `g._login_user`): reading
  `current_user` here could run Dify's loaders (database, JWT) after the view finished.

Nothing here can fail a request: any error leaves the headers out (nginx then logs an empty
user_id, which audit-guard flags `missing_field:user_id` on audited paths).
"""

from __future__ import annotations

import os
from typing import Any

DIFY_GUNICORN_CONF = os.environ.get("AUDIT_GUARD_DIFY_GUNICORN_CONF", "/app/api/gunicorn.conf.py")
USER_HEADER = "X-Audit-User-Id"
APP_HEADER = "X-Audit-App-Id"
MAX_HEADER_VALUE = 256  # audit-guard flags longer identities invalid anyway

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


def audit_identity(user: Any, view_args: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(user header, app header) for the request's logged-in user and URL arguments."""
    user_id = app_id = None
    if user is not None:
        session_id = getattr(user, "session_id", None)
        if session_id is not None:  # an EndUser (service API `user`, web app passport)
            user_id = f"end_user:{session_id}"
            app_id = getattr(user, "app_id", None)
        elif getattr(user, "id", None) is not None:  # an Account
            user_id = f"account:{user.id}"
    if view_args and view_args.get("app_id") is not None:
        app_id = view_args["app_id"]
    return _header_value(user_id), _header_value(app_id)


def _set_audit_headers(_sender: object, response: Any = None, **_extra: object) -> None:
    try:
        from flask import g, request

        user = getattr(g, "_login_user", None)
        user_header, app_header = audit_identity(user, request.view_args)
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


def post_worker_init(worker: Any) -> None:
    if callable(_dify_post_worker_init):
        _dify_post_worker_init(worker)
    # Imported here: this runs after the gevent worker patched the standard library.
    from flask.signals import request_finished

    request_finished.connect(_set_audit_headers, weak=False)
