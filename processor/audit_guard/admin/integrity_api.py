"""GET /api/integrity/key: the public key that signs the audit digests (issue #14).

Public by design (it verifies, it cannot sign), so it needs no token. 404 while integrity is
off. `serve` puts the PEM in `app.state.public_key_pem`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from .errors import AdminError, error_responses

__all__ = ["add_integrity_routes"]


def add_integrity_routes(app: FastAPI) -> None:
    @app.get("/api/integrity/key", summary="Digest signing public key", tags=["integrity"],
             response_class=Response,
             responses={200: {"content": {"application/x-pem-file": {"schema": {
                 "type": "string"}}}, "description": "Ed25519 public key, PEM; its key id in "
                 "the X-Audit-Key-Id header"}, **error_responses(404)},
             description="The Ed25519 public key of this instance's digest signatures "
                         "(audit-guard verify --public-key). 404 when integrity is off.")
    def integrity_key(request: Request) -> Response:
        pem: bytes | None = getattr(request.app.state, "public_key_pem", None)
        if pem is None:
            raise AdminError(404, "integrity is off (integrity.enabled: false): no digest key")
        key_id: str = getattr(request.app.state, "key_id", "")
        return Response(pem, media_type="application/x-pem-file",
                        headers={"X-Audit-Key-Id": key_id})
