"""What a request to the admin port may cost: its body is capped (refused with 413 before it is
read, by Content-Length, or as it streams in), its Host header must be one the port expects
(against DNS rebinding: a web page must not reach a loopback-bound admin API through a name it
controls)."""

from __future__ import annotations

from typing import Any

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse

__all__ = ["BodyLimit", "TrustedHostMiddleware"]

Scope = dict[str, Any]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413, never read in full."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Any, send: Any) -> None:
        response = JSONResponse(
            {"error": f"request body larger than admin.max_body_bytes ({self.limit} bytes)",
             "details": []}, 413)
        await response(scope, receive, send)
