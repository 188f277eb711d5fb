"""GET /api/integrity/key: the digest signing public key, as serve publishes it."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi.testclient import TestClient

from audit_guard.admin import AdminState, create_app
from audit_guard.config import load_settings
from audit_guard.integrity.keys import key_id
from audit_guard.rules import RuleRegistry
from audit_guard.serve import build_service
from demo.procs import free_port


def test_the_key_is_served_when_integrity_is_on(tmp_path: Path) -> None:
    settings = load_settings(server={"listen": f"127.0.0.1:{free_port()}"},
                             admin={"listen": f"127.0.0.1:{free_port()}"},
                             reconcile={"enabled": False},
                             integrity={"enabled": True, "state_dir": str(tmp_path)})
    service = build_service(settings)
    try:
        client = TestClient(service.admin_app, base_url=f"http://{settings.admin.listen}")
        answer = client.get("/api/integrity/key")
    finally:
        service.admin_socket.close()
    assert answer.status_code == 200
    public = load_pem_public_key(answer.content)
    assert answer.headers["x-audit-key-id"] == key_id(public)  # type: ignore[arg-type]
    assert (tmp_path / "public-keys" / f"{key_id(public)}.pub").read_bytes() == answer.content
    assert (tmp_path / "signing-key.pem").stat().st_mode & 0o777 == 0o600


def test_404_while_integrity_is_off() -> None:
    app = create_app(AdminState(flags_buffer=10), RuleRegistry())
    answer = TestClient(app).get("/api/integrity/key")
    assert answer.status_code == 404
    assert "integrity.enabled" in answer.json()["error"]
