"""audit-guard doctor: nginx, Docker, app checks and the CLI, on real inputs.

Every nginx config here is first accepted by the real `nginx -t`, so the checks are proven on
configs nginx would run, not on shapes only the parser likes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from audit_guard.doctor import main
from audit_guard.doctor.app import check_app_env, parse_env_file
from audit_guard.doctor.docker import check_daemon_json, check_inspect
from audit_guard.doctor.findings import Finding, Level
from audit_guard.doctor.nginx import check_nginx
from demo.nginx import nginx_argv, render_nginx_conf

FIX = Path(__file__).parent / "doctor_fixtures"


def levels(findings: list[Finding], check: str) -> list[Level]:
    return [f.level for f in findings if f.check == check]


def nginx_t(conf: Path) -> None:
    proc = subprocess.run([*nginx_argv(conf), "-t"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def dify_conf(tmp: Path, *, log_line: str | None = None, log_format: str | None = None) -> Path:
    """Dify-shaped nginx.conf (+ its proxy.conf) in tmp, optionally with another access_log
    line / log_format, checked by nginx -t."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "proxy.conf").write_text((FIX / "dify_proxy.conf").read_text())
    text = (FIX / "dify_nginx.conf").read_text().replace("@TMP@", str(tmp))
    text = text.replace("@UP@", "127.0.0.1:5001").replace("@PORT@", "18099")
    if log_format:
        text = text.replace("    access_log ", f"    {log_format}\n    access_log ", 1)
    if log_line:
        text = text.replace(f"access_log {tmp}/access.log main;", log_line)
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    nginx_t(conf)
    return conf


@pytest.fixture
def demo_conf(tmp_path: Path) -> Path:
    conf = render_nginx_conf(tmp_path / "demo", 18080, 18081, 18082).conf
    nginx_t(conf)
    return conf


def test_dify_stock_config_is_flagged(tmp_path: Path) -> None:
    found = check_nginx(dify_conf(tmp_path))
    # /console/api, /api, /v1 and / proxy audited paths; /files does not.
    assert levels(found, "nginx.proxy_buffering") == [Level.WARN]  # one proxy.conf line
    fields = [f for f in found if f.check == "nginx.access_log_fields"]
    assert [f.level for f in fields] == [Level.FAIL]
    for missing in ("request_id", "request_completion", "upstream_response_length", "identity"):
        assert missing in fields[0].title
    assert "body_bytes_sent" not in fields[0].title
    assert fields[0].evidence.line == 15 and "log_format main" in str(fields[0].evidence.value)
    assert set(levels(found, "nginx.request_id_upstream")) == {Level.WARN}
    assert levels(found, "nginx.error_log_level") == [Level.WARN]
    assert levels(found, "nginx.status_endpoint") == [Level.WARN]
    assert not levels(found, "nginx.log_escape") and not levels(found, "nginx.access_log_buffer")


def test_demo_config_is_healthy(demo_conf: Path) -> None:
    found = check_nginx(demo_conf)
    assert levels(found, "nginx.access_log_fields") == [Level.OK]
    assert levels(found, "nginx.request_id_upstream") == [Level.OK]
    assert levels(found, "nginx.error_log_level") == [Level.OK]
    assert levels(found, "nginx.status_endpoint") == [Level.OK]
    # Streaming like Dify, but covered: error log at info and $connection logged, so cut
    # streams are joined from the error log.
    assert levels(found, "nginx.proxy_buffering") == [Level.OK]
    assert {f.level for f in found} == {Level.OK}


def test_nginx_T_output_gives_the_same_findings(demo_conf: Path, tmp_path: Path) -> None:
    proc = subprocess.run([*nginx_argv(demo_conf), "-T"], capture_output=True, text=True,
                          check=True)
    dump = tmp_path / "nginx-T.txt"
    dump.write_text(proc.stdout)
    assert check_nginx(dump=dump) == check_nginx(demo_conf)


def test_json_format_without_escape_and_buffered_log(tmp_path: Path) -> None:
    fmt = ("log_format j '{\"request_id\":\"$request_id\",\"c\":\"$request_completion\","
           "\"b\":$body_bytes_sent,\"u\":\"$upstream_response_length\","
           "\"user_id\":\"$upstream_http_x_audit_user_id\"}';")
    conf = dify_conf(tmp_path, log_format=fmt,
                     log_line=f"access_log {tmp_path}/access.log j buffer=32k;")
    found = check_nginx(conf)
    assert levels(found, "nginx.access_log_fields") == [Level.OK]
    assert levels(found, "nginx.log_escape") == [Level.FAIL]
    assert levels(found, "nginx.access_log_buffer") == [Level.WARN]
    # With escape=json and flush= both findings go away.
    conf = dify_conf(tmp_path / "fixed", log_format=fmt.replace("j '", "j escape=json '"),
                     log_line=f"access_log {tmp_path}/access.log j buffer=32k flush=1s;")
    found = check_nginx(conf)
    assert not levels(found, "nginx.log_escape") and not levels(found, "nginx.access_log_buffer")


def test_docker_daemon_json() -> None:
    assert {f.level for f in check_daemon_json(FIX / "daemon_good.json")} == {Level.OK}
    lossy = check_daemon_json(FIX / "daemon_lossy.json")
    assert levels(lossy, "docker.log_mode") == [Level.FAIL]
    assert "4m" in lossy[1].title and "DROPS" in lossy[1].why
    assert levels(lossy, "docker.log_rotation") == [Level.WARN]  # 10m x 3 = 30 MiB
    assert levels(check_daemon_json(FIX / "daemon_journald.json"), "docker.log_driver") == [
        Level.FAIL]


def test_docker_inspect() -> None:
    found = check_inspect(FIX / "inspect.json")
    api = [f for f in found if "docker-api-1" in f.title or "docker-api-1" in str(
        f.evidence.file)]
    assert levels(api, "docker.log_mode") == [Level.FAIL]
    assert levels(api, "docker.log_rotation") == [Level.WARN]  # 5m, one file
    assert levels(api, "docker.python_unbuffered") == [Level.WARN]
    assert levels(api, "docker.gunicorn_capture") == [Level.WARN]
    # Dify settings in the api container's Env are checked too.
    assert levels(api, "app.log_format") == [Level.WARN]
    assert levels(api, "app.request_logging") == [Level.WARN]
    worker = [f for f in found if "docker-worker-1" in f.title]
    assert [f.level for f in worker] == [Level.OK]  # python -u, json-file 100m
    nginx = [f for f in found if "docker-nginx-1" in f.title]
    assert levels(nginx, "docker.log_driver") == [Level.FAIL]


def test_app_env() -> None:
    bad = check_app_env(parse_env_file(FIX / "dify_bad.env"), "dify_bad.env")
    assert {f.check: f.level for f in bad} == {
        "app.log_format": Level.WARN, "app.request_logging": Level.WARN,
        "app.otel_sampling": Level.WARN}
    assert bad[0].evidence.line == 3
    good = check_app_env(parse_env_file(FIX / "dify_good.env"), "dify_good.env")
    assert {f.level for f in good} == {Level.OK} and len(good) == 3


def test_cli_exit_codes_and_json(demo_conf: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--app-env", str(FIX / "dify_good.env")]) == 0
    assert main(["--nginx-conf", str(demo_conf)]) == 0  # the demo stack's own config: healthy
    capsys.readouterr()
    assert main(["--app-env", str(FIX / "dify_bad.env")]) == 1
    out = capsys.readouterr().out
    assert "WARN" in out and "fix:" in out and "0 fail, 3 warn" in out
    assert main(["--docker-daemon-json", str(FIX / "daemon_lossy.json"), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 2
    assert {"check", "subsystem", "level", "title", "evidence", "why", "fix"} <= set(
        doc["findings"][0])
    # Usage errors: 3, never confused with a finding.
    assert main([]) == 3
    assert main(["--bogus"]) == 3
    assert main(["--app-env", str(tmp_path / "missing.env")]) == 3
    bad = tmp_path / "bad.conf"
    bad.write_text("http { server { ")
    assert main(["--nginx-conf", str(bad)]) == 3
    assert "audit-guard doctor:" in capsys.readouterr().err


def test_rotation_is_judged_at_the_observed_log_rate(tmp_path: Path) -> None:
    """With the container's log files readable here, rotation is measured in time at the rate
    they were written: 10m x 3 is plenty for a quiet container and 10 minutes for a busy one."""
    logs = tmp_path / "containers" / "abc"
    logs.mkdir(parents=True)
    current, rotated = logs / "abc-json.log", logs / "abc-json.log.1"

    def inspect(rate_mib_per_h: float) -> Path:
        # the rotated file was closed 10 minutes before the current one was last written
        for path, age_s in ((rotated, 600), (current, 0)):
            path.write_bytes(b"x" * int(rate_mib_per_h * 1024**2 / 6))  # 10 minutes' worth
            os.utime(path, (time.time() - age_s, time.time() - age_s))
        doc = tmp_path / "inspect.json"
        doc.write_text(json.dumps([{
            "Name": "/api", "LogPath": str(current),
            "HostConfig": {"LogConfig": {"Type": "json-file",
                                         "Config": {"max-size": "10m", "max-file": "3"}}},
            "Config": {"Image": "nginx", "Env": []},
        }]))
        return doc

    # Docker reads max-size 10m as 10,000,000 bytes (go-units FromHumanSize is decimal):
    # 3 x 10 MB at 6 MiB/h is 4.8 h, not 5.
    (quiet,) = [f for f in check_inspect(inspect(6)) if f.check == "docker.log_rotation"]
    assert quiet.level is Level.OK and "4.8 h" in quiet.title
    (busy,) = [f for f in check_inspect(inspect(180)) if f.check == "docker.log_rotation"]
    assert busy.level is Level.WARN and "10 min" in busy.title and "180 MiB/h" in busy.title
    # Empty files (nothing written in the span): no rate to judge by, the fixed 100 MB rule
    # applies (it was a division by zero).
    (idle,) = [f for f in check_inspect(inspect(0)) if f.check == "docker.log_rotation"]
    assert idle.level is Level.WARN and "observed" not in idle.title


def test_header_buffer_too_small_is_found(tmp_path: Path) -> None:
    small = dify_conf(tmp_path / "small")
    (small.parent / "proxy.conf").write_text(
        (small.parent / "proxy.conf").read_text() + "proxy_buffer_size 1k;\n")
    nginx_t(small)
    (finding,) = [f for f in check_nginx(small) if f.check == "nginx.proxy_buffer_size"]
    assert finding.level is Level.WARN and "below 4k" in finding.title
    assert "too big header" in finding.why
    roomy = dify_conf(tmp_path / "roomy")
    (roomy.parent / "proxy.conf").write_text(
        (roomy.parent / "proxy.conf").read_text() + "proxy_buffer_size 8k;\n")
    nginx_t(roomy)
    assert levels(check_nginx(roomy), "nginx.proxy_buffer_size") == [Level.OK]
