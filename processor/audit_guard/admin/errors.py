"""The admin API's errors — always JSON `{"error": "...", "details": [...]}` worded for an
operator — and the bearer-token check of its one mutating endpoint.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .models import ErrorBody

log = logging.getLogger("audit_guard.admin.app")  # the name the API logged under before the split

# Module level: FastAPI resolves the (string) annotations of dependencies in module globals.
_BEARER = HTTPBearer(auto_error=False, description="admin.token (AUDIT_GUARD_ADMIN__TOKEN)")


def _utf8(text: str) -> str:
    """Messages quote what the client sent, which JSON may carry as a lone surrogate (\\ud800):
    written as an escape, not an encoding error (a 500)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class AdminError(Exception):
    """An error answered as JSON {"error", "details"} with the given status."""

    def __init__(self, status: int, error: str, details: list[str] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.details = status, error, details or []
        self.headers = dict(headers or {})


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of an endpoint that may answer these error codes."""
    text = {400: "bad request", 401: "missing or wrong bearer token",
            403: "mutations disabled: admin.token is not set",
            404: "not found (the message says why)", 413: "body too large",
            415: "unsupported content type", 422: "invalid request or rule set",
            503: "not ready"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def _allowed_methods(request: Request) -> list[str]:
    """Every method any route serves on this path. Starlette's own 405 lists only the first
    matching route's methods (GET and PUT /api/rules are two routes), so `Allow` would lie."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)  # PARTIAL: the path matches, not the method
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app can answer, as JSON."""

    @app.exception_handler(AdminError)
    async def _admin_error(_: Request, exc: AdminError) -> JSONResponse:
        return JSONResponse({"error": _utf8(exc.error), "details": list(map(_utf8, exc.details))},
                            exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.url.path} (see /docs)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
                       exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse({"error": _utf8(message), "details": []}, exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Messages only: echoing the input back could fail on undecodable bytes and adds noise.
        details = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
                   for err in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": details}, 422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("admin API: unexpected error")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "details": []},
                            500)


def token_check(token: str | None, what: str = "changing the rules over the API"
                ) -> Callable[..., None]:
    """The dependency of a protected endpoint: `Authorization: Bearer <token>`, compared in
    constant time; with no token configured, `what` is disabled outright (403)."""

    def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if token is None:
            raise AdminError(403, f"{what} is disabled: set admin.token to enable it (env "
                                  "AUDIT_GUARD_ADMIN__TOKEN)")
        challenge = {"WWW-Authenticate": 'Bearer realm="audit-guard"'}
        if creds is None:
            raise AdminError(401, "missing `Authorization: Bearer <admin.token>`",
                             headers=challenge)
        if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise AdminError(401, "wrong bearer token",
                             headers={**challenge, "WWW-Authenticate":
                                      'Bearer realm="audit-guard", error="invalid_token"'})

    return require_token
