"""doctor never prints a secret (issue #13): a PostgreSQL password in any DSN form, a Docker log
driver's token or URL password — in the text and the --json output, also when the connection
fails and the driver's error is shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit_guard.doctor.secrets import redact_dsn, redact_options

SECRET = "hunter2-S3cr3t"
DSNS = [
    f"postgresql://app:{SECRET}@127.0.0.1:1/dify",
    f"postgres://app:{SECRET}@127.0.0.1:1/dify?sslmode=disable",
    f"postgresql://app@127.0.0.1:1/dify?password={SECRET}&sslmode=disable",
    f"host=127.0.0.1 port=1 user=app password={SECRET} dbname=dify",
    f"host=127.0.0.1 port=1 password='{SECRET} with space' user=app",
    f"host=127.0.0.1 port=1 user=app sslpassword={SECRET} password = {SECRET}",
]


@pytest.mark.parametrize("dsn", DSNS)
def test_a_dsn_is_shown_without_its_secret(dsn: str) -> None:
    shown = redact_dsn(dsn)
    assert SECRET not in shown and "***" in shown
    assert "127.0.0.1" in shown and "app" in shown  # the rest stays, to see what was tried


@pytest.mark.parametrize("dsn", DSNS)
@pytest.mark.parametrize("as_json", [False, True])
def test_doctor_postgres_output_holds_no_secret(dsn: str, as_json: bool) -> None:
    """The real command against a port nobody listens on: the connection failure is shown."""
    result = subprocess.run(
        [sys.executable, "-m", "audit_guard.cli", "doctor", "--postgres", dsn,
         *(["--json"] if as_json else [])], capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert "cannot connect to PostgreSQL" in out or "postgres.connect" in out, out
    assert SECRET not in out


def test_docker_log_options_hold_no_secret(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text(json.dumps({"log-driver": "splunk", "log-opts": {
        "splunk-token": SECRET, "splunk-url": f"https://audit:{SECRET}@splunk.example:8088",
        "tag": "{{.Name}}"}}))
    result = subprocess.run([sys.executable, "-m", "audit_guard.cli", "doctor",
                             "--docker-daemon-json", str(daemon)],
                            capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert "log-driver=splunk" in out, out
    assert SECRET not in out
    assert redact_options({"max-size": "10m", "labels": "a,b"}) == {"max-size": "10m",
                                                                    "labels": "a,b"}
