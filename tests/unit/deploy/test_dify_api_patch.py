"""The Dify overlay's identity patch (deploy/dify/api/audit_guard_gunicorn.py) in real gunicorn,
Flask and flask-login, started the way the overlay starts Dify's API server: Dify's entrypoint
command (`gunicorn --bind … --workers 1 app:app`, here with the sync worker: gevent is not
installed) and `GUNICORN_CMD_ARGS=--config <the patch>`. The app is a test double of Dify's
(tests/support/dify_flask_double.py) that logs users in as Dify's code does; Dify's own
gunicorn.conf.py is stood in for by a file whose post_worker_init leaves a marker.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.procs import ManagedProcess, free_port, port_open, repo_root, wait_until
from tests.support.dify_flask_double import (
    ACCOUNT_ID,
    APP_ID,
    APP_KEY,
    CONSOLE_TOKEN,
    OWNER_ID,
    PASSPORT,
    WEB_APP_ID,
    WEB_SESSION,
)

REPO = repo_root()
PATCH = REPO / "deploy" / "dify" / "api" / "audit_guard_gunicorn.py"
CONSOLE_APP = "3e7b9f2c-1d4a-4c8e-b5f6-0a9d8c7e6b51"
STAND_IN_DIFY_CONF = """\
import os

def post_worker_init(worker):
    with open(os.environ["DIFY_HOOK_MARKER"], "w") as f:
        f.write("Dify's post_worker_init ran")
"""


def identity(base: str, method: str, path: str, token: str,
             body: bytes | None = None) -> tuple[int, str | None, str | None]:
    req = urllib.request.Request(base + path, data=body, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, headers = resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        status, headers = exc.code, exc.headers
    return status, headers.get("X-Audit-User-Id"), headers.get("X-Audit-App-Id")


def gunicorn(tmp_path: Path, name: str, patched: bool) -> tuple[ManagedProcess, str]:
    """Dify's entrypoint command (sync worker) on a free loopback port."""
    port = free_port()
    dify_conf = tmp_path / "dify-gunicorn.conf.py"
    dify_conf.write_text(STAND_IN_DIFY_CONF)
    env = {"AUDIT_GUARD_DIFY_GUNICORN_CONF": str(dify_conf),
           "DIFY_HOOK_MARKER": str(tmp_path / f"{name}.marker"),
           "PYTHONPATH": str(REPO)}
    if patched:
        env["GUNICORN_CMD_ARGS"] = f"--config {PATCH}"
    proc = ManagedProcess(name, [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--timeout", "30", "tests.support.dify_flask_double:app",
    ], log_dir=tmp_path, env=env, cwd=tmp_path).start()
    proc.wait_ready(lambda: port_open(port), timeout=30)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("patched")
    proc, base = gunicorn(tmp, "gunicorn", patched=True)
    try:
        yield base, tmp
    finally:
        proc.stop()
        # Both Dify functions were found and wrapped (else the worker says which was not).
        assert "audit-guard identity patch" not in proc.log_path.read_text()


def test_service_api_end_user_and_app(patched: tuple[str, Path]) -> None:
    base, _ = patched
    assert identity(base, "POST", "/v1/chat-messages", APP_KEY,
                    b'{"query": "hi", "user": "alice@example.com"}') == (
        200, "end_user:alice@example.com", APP_ID)


def test_service_api_without_user_is_the_owners_account_and_the_keys_app(
    patched: tuple[str, Path],
) -> None:
    base, _ = patched
    assert identity(base, "GET", "/v1/parameters", APP_KEY) == (
        200, f"account:{OWNER_ID}", APP_ID)


def test_web_app_passport_end_user_and_app(patched: tuple[str, Path]) -> None:
    base, _ = patched
    assert identity(base, "GET", "/api/parameters", PASSPORT) == (
        200, f"end_user:{WEB_SESSION}", WEB_APP_ID)


def test_console_account_and_the_urls_app(patched: tuple[str, Path]) -> None:
    base, _ = patched
    assert identity(base, "GET", f"/console/api/apps/{CONSOLE_APP}/workflows/draft",
                    CONSOLE_TOKEN) == (200, f"account:{ACCOUNT_ID}", CONSOLE_APP)


def test_nobody_logged_in_gives_no_identity(patched: tuple[str, Path]) -> None:
    base, _ = patched
    assert identity(base, "POST", "/v1/chat-messages", "app-wrong", b'{"user": "x"}') == (
        401, None, None)


def test_a_view_cannot_speak_for_identity(patched: tuple[str, Path]) -> None:
    base, _ = patched
    assert identity(base, "GET", "/v1/forged", APP_KEY) == (200, None, None)


def test_a_failed_request_is_still_attributed(patched: tuple[str, Path]) -> None:
    base, _ = patched
    assert identity(base, "GET", "/v1/boom", APP_KEY) == (500, f"account:{ACCOUNT_ID}", None)


def test_difys_own_gunicorn_config_still_runs(patched: tuple[str, Path]) -> None:
    _, tmp = patched
    marker = tmp / "gunicorn.marker"
    wait_until(marker.exists, 10, "Dify's post_worker_init")
    assert marker.read_text() == "Dify's post_worker_init ran"


def test_control_without_the_patch_there_is_no_identity(tmp_path: Path) -> None:
    proc, base = gunicorn(tmp_path, "stock", patched=False)
    try:
        assert identity(base, "POST", "/v1/chat-messages", APP_KEY, b'{"user": "alice"}') == (
            200, None, None)
    finally:
        proc.stop()
