"""POST /api/membership-change through the app `serve` builds (the watch it reaches is the one
the completeness ticker keeps back missing_record reports with)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from audit_guard.admin import AdminState, create_app
from audit_guard.config import load_settings
from audit_guard.rules import RuleRegistry
from audit_guard.serve import Service, build_service
from demo.procs import free_port

TOKEN = "membership-token-0123456789"


def built(**overrides: Any) -> Service:
    settings = load_settings(server={"listen": f"127.0.0.1:{free_port()}"},
                             admin={"listen": f"127.0.0.1:{free_port()}", **overrides},
                             reconcile={"window_s": 5})
    return build_service(settings)


@pytest.fixture
def service() -> Iterator[Service]:
    service = built(token=TOKEN)
    yield service
    service.admin_socket.close()


def client_of(service: Service) -> TestClient:
    return TestClient(service.admin_app, base_url=f"http://{service.settings.admin.listen}",
                      raise_server_exceptions=False)


def test_the_call_records_a_change_and_counts_it(service: Service) -> None:
    completeness = service.server.completeness
    assert completeness is not None
    before = time.time()
    answer = client_of(service).post("/api/membership-change",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert before <= body["change_unix"] <= time.time()
    assert body["grace_s"] == 10  # 2 × reconcile.window_s
    assert body["grace_until_unix"] == pytest.approx(body["change_unix"] + 10)
    change = completeness.membership.last_change
    assert change is not None and change.trigger == "api"
    assert service.server.telemetry.snapshot()["audit_membership_changes_total"] == 1
    # The grace the ticker keeps missing_record reports back in ends 2 windows on.
    assert completeness.membership.grace_until_ns() == change.at_ns + 10 * 1_000_000_000
    # ... and the admin status shows it.
    status = client_of(service).get("/api/status").json()["membership"]
    assert status == {"dns_name": None, "addresses": None, "grace_s": 10,
                      "last_change_unix_nano": change.at_ns, "last_change_trigger": "api",
                      "grace_until_unix_nano": change.at_ns + 10 * 1_000_000_000,
                      "suppressed_total": 0}


def test_the_call_needs_the_token(service: Service) -> None:
    client = client_of(service)
    assert client.post("/api/membership-change").status_code == 401
    wrong = client.post("/api/membership-change", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert service.server.completeness is not None
    assert service.server.completeness.membership.last_change is None
    assert client.get("/api/membership-change").status_code == 405


def test_without_a_token_configured_the_call_is_disabled() -> None:
    service = built()
    try:
        answer = client_of(service).post("/api/membership-change",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        service.admin_socket.close()
    assert answer.status_code == 403
    assert "admin.token" in answer.json()["error"]


def test_404_while_reconciliation_is_off() -> None:
    app = create_app(AdminState(flags_buffer=10), RuleRegistry(), token=TOKEN)
    client = TestClient(app)
    answer = client.post("/api/membership-change", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    assert "reconcile.enabled" in answer.json()["error"]
    assert client.get("/api/status").json()["membership"] is None
