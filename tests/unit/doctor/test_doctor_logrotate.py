"""audit-guard doctor --logrotate: logrotate's grammar and the settings that lose audit lines,
and the collector's side of rotation (reads `<name>.1`; no in-memory batch before its queues).

Every config here is first accepted by the real `logrotate --debug` (it parses the config and
changes nothing), so a finding is proven on a config logrotate would run. Debian's own
/etc/logrotate.d/nginx (installed with the nginx package) is the real-world good example.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit_guard.doctor import main
from audit_guard.doctor.collector import check_collector, load_merged
from audit_guard.doctor.findings import Finding, Level
from audit_guard.doctor.logrotate import AuditLog, audit_logs_from_collector, check_logrotate
from audit_guard.doctor.logrotate_conf import glob_matches, parse_config, parse_size
from demo.backends import collector_config_path
from demo.procs import tool_path

DEBIAN_NGINX = Path("/etc/logrotate.d/nginx")
ACCESS = AuditLog("/var/log/nginx/audit.json.log", "nginx_access")
APP = AuditLog("/var/log/app/audit.json.log", "app")


def logrotate_accepts(conf: Path) -> None:
    """The real logrotate parses it without a config error (debug mode: nothing is rotated;
    the example logs do not exist here, so "stat of … failed" is the one error allowed)."""
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    proc = subprocess.run([logrotate, "--debug", "--state", "/dev/null", str(conf)],
                          capture_output=True, text=True, timeout=30, check=False)
    errors = [line for line in proc.stderr.splitlines()
              if line.startswith("error:") and not line.startswith("error: stat of ")]
    assert "rotating pattern" in proc.stderr and not errors, proc.stderr


def conf(tmp: Path, text: str, name: str = "audit") -> Path:
    path = tmp / name
    path.write_text(text)
    path.chmod(0o644)  # logrotate ignores group/world-writable configs
    logrotate_accepts(path)
    return path


def by_check(found: list[Finding]) -> dict[str, list[Level]]:
    out: dict[str, list[Level]] = {}
    for f in found:
        out.setdefault(f.check, []).append(f.level)
    return out


GOOD = """\
/var/log/nginx/audit.json.log {
    daily
    rotate 14
    compress
    delaycompress
    missingok
    sharedscripts
    postrotate
        nginx -s reopen
    endscript
}
"""


# ----------------------------------------------------------------------------------- grammar


def test_debian_nginx_package_config_is_safe() -> None:
    # No skip: bootstrap installs nginx (and with it this file) and logrotate.
    logrotate_accepts(DEBIAN_NGINX)
    blocks = parse_config([DEBIAN_NGINX])
    assert [b.patterns for b in blocks] == [["/var/log/nginx/*.log"]]
    assert {"prerotate", "postrotate"} <= set(blocks[0].scripts)
    assert "invoke-rc.d nginx rotate" in blocks[0].scripts["postrotate"].value
    found = check_logrotate([DEBIAN_NGINX], [ACCESS, AuditLog("/var/log/nginx/error.log",
                                                               "nginx_error")])
    assert [(f.check, f.level) for f in found] == [("logrotate.rotation", Level.OK)]


def test_grammar_globals_blocks_quotes_includes_and_scripts(tmp_path: Path) -> None:
    d = tmp_path / "logrotate.d"
    d.mkdir()
    (d / "app").write_text('"/var/log/my app/a.log" /var/log/app/*.log\n{\n  rotate 3\n}\n')
    (d / "app.dpkg-old").write_text("/var/log/app/*.log {\n  rotate 0\n}\n")  # taboo: skipped
    for f in d.iterdir():
        f.chmod(0o644)
    main_conf = conf(tmp_path, f"""\
# globals before a block apply to it
compress
rotate = 5
  # an indented comment
include {d}
/var/log/nginx/audit.json.log /var/log/nginx/error.log {{
    delaycompress
    size=50M
    postrotate
        # script lines are shell, never directives: compress }} rotate 0
        kill -USR1 `cat /run/nginx.pid`
    endscript
}}
nocompress
/var/log/late.log {{}}
""", "logrotate.conf")
    blocks = parse_config([main_conf])
    assert [b.patterns for b in blocks] == [
        ["/var/log/my app/a.log", "/var/log/app/*.log"],
        ["/var/log/nginx/audit.json.log", "/var/log/nginx/error.log"],
        ["/var/log/late.log"],
    ]
    app, nginx, late = blocks
    assert app.options["rotate"].value == 3 and app.on("compress")  # global compress inherited
    assert (app.file, app.line) == (str(d / "app"), 1)
    assert nginx.options["rotate"].value == 5 and nginx.on("delaycompress")
    assert nginx.options["size"].value == 50 * 1024**2
    assert nginx.options["frequency"].value == "size"
    assert nginx.options["compress"].line == 2  # evidence points at the global line
    assert "kill -USR1" in nginx.scripts["postrotate"].value
    assert not late.on("compress")  # `nocompress` came after the first blocks only


@pytest.mark.parametrize(("pattern", "path", "match"), [
    ("/var/log/nginx/*.log", "/var/log/nginx/audit.json.log", True),
    ("/var/log/nginx/*.log", "/var/log/nginx/audit.json.log.1", False),
    ("/var/log/*.log", "/var/log/nginx/audit.json.log", False),  # `*` never crosses `/`
    ("/var/log/postgresql/*.log", "/var/log/postgresql/postgresql-*.log", True),
    ("/var/log/postgresql/postgresql-15-main.log", "/var/log/postgresql/postgresql-*.log", True),
    ("/var/log/nginx/[ae]*.log", "/var/log/nginx/error.log", True),
])
def test_glob_matching(pattern: str, path: str, match: bool) -> None:
    assert glob_matches(pattern, path) is match


def test_sizes() -> None:
    assert [parse_size(s) for s in ("100", "100k", "10M", "1G", "x")] == [
        100, 100 * 1024, 10 * 1024**2, 1024**3, None]


@pytest.mark.parametrize("text", [
    "}\n",
    "/a.log {\n  daily\n  }\n}\n",
    "/a.log {\n  postrotate\n    true\n}\n",  # no endscript
    "postrotate\n  true\nendscript\n",  # script outside a block
])
def test_syntax_errors_are_usage_errors(tmp_path: Path, text: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken"
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path)):
        parse_config([path])
    assert main(["--logrotate", str(path)]) == 3
    assert str(path) in capsys.readouterr().err


# ------------------------------------------------------------------------------------ checks


def test_good_rename_and_reopen_block_is_ok(tmp_path: Path) -> None:
    found = check_logrotate([conf(tmp_path, GOOD)], [ACCESS])
    assert by_check(found) == {"logrotate.rotation": [Level.OK]}


def test_compress_without_delaycompress_fails(tmp_path: Path) -> None:
    path = conf(tmp_path, GOOD.replace("    delaycompress\n", ""))
    found = check_logrotate([path], [ACCESS])
    assert by_check(found) == {"logrotate.compress": [Level.FAIL]}
    assert (found[0].evidence.file, found[0].evidence.line) == (str(path), 4)
    assert "delaycompress" in found[0].fix


@pytest.mark.parametrize(("script", "ok"), [
    ("nginx -s reopen", True),
    ("/usr/sbin/nginx -c /etc/nginx/nginx.conf -s reopen", True),
    ("invoke-rc.d nginx rotate >/dev/null 2>&1", True),
    ("kill -USR1 $(cat /run/nginx.pid)", True),
    ("docker compose kill -s USR1 nginx", True),
    ("systemctl reload nginx", True),
    ("echo rotated", False),
])
def test_nginx_rename_needs_a_reopening_postrotate(tmp_path: Path, script: str, ok: bool) -> None:
    path = conf(tmp_path, GOOD.replace("nginx -s reopen", script))
    found = check_logrotate([path], [ACCESS])
    assert by_check(found) == ({"logrotate.rotation": [Level.OK]} if ok
                               else {"logrotate.reopen": [Level.FAIL]})


def test_nginx_without_postrotate_fails_unless_copytruncate(tmp_path: Path) -> None:
    no_script = GOOD.replace("    postrotate\n        nginx -s reopen\n    endscript\n", "")
    found = check_logrotate([conf(tmp_path, no_script)], [ACCESS])
    assert by_check(found) == {"logrotate.reopen": [Level.FAIL]}
    # copytruncate needs no reopen, but loses the copy→truncate window: a warning
    found = check_logrotate([conf(tmp_path, no_script.replace("daily", "daily\n copytruncate"),
                                  "ct")], [ACCESS])
    assert by_check(found) == {"logrotate.copytruncate": [Level.WARN]}
    # not nginx: renaming without a script only warns (the writer may notice by itself)
    found = check_logrotate([conf(tmp_path, no_script.replace(ACCESS.path, APP.path), "app")],
                            [APP])
    assert by_check(found) == {"logrotate.reopen": [Level.WARN]}


def test_rotate_zero_fails_and_unset_warns(tmp_path: Path) -> None:
    found = check_logrotate([conf(tmp_path, GOOD.replace("rotate 14", "rotate 0"))], [ACCESS])
    assert by_check(found) == {"logrotate.rotate_count": [Level.FAIL]}
    found = check_logrotate([conf(tmp_path, GOOD.replace("rotate 14\n", ""), "unset")],
                            [ACCESS])
    assert by_check(found) == {"logrotate.rotate_count": [Level.WARN]}


@pytest.mark.parametrize("directive", ["olddir /var/log", "dateext",
                                       "extension .log", "start 0"])
def test_rotated_file_not_named_dot_one_fails(tmp_path: Path, directive: str) -> None:
    found = check_logrotate([conf(tmp_path, GOOD.replace("daily", f"daily\n    {directive}"))],
                            [ACCESS])
    assert by_check(found) == {"logrotate.rotated_name": [Level.FAIL]}
    assert found[0].evidence.value == directive


@pytest.mark.parametrize(("directive", "warn"), [
    ("hourly", True), ("size 1M", True), ("maxsize 512k", True), ("size 100M", False),
    ("maxsize 1G", False), ("weekly", False),
])
def test_rotation_faster_than_the_collector_can_lag(tmp_path: Path, directive: str,
                                                   warn: bool) -> None:
    found = check_logrotate([conf(tmp_path, GOOD.replace("daily", directive))], [ACCESS])
    assert by_check(found) == ({"logrotate.frequency": [Level.WARN]} if warn
                               else {"logrotate.rotation": [Level.OK]})


def test_audit_log_without_a_block_warns(tmp_path: Path) -> None:
    found = check_logrotate([conf(tmp_path, GOOD)], [ACCESS, APP])
    assert by_check(found) == {"logrotate.rotation": [Level.OK],
                               "logrotate.coverage": [Level.WARN]}


def test_audit_logs_come_from_the_collector_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_AUDIT_LOG", "/srv/app/audit.log")
    monkeypatch.delenv("NGINX_ACCESS_LOG", raising=False)
    logs = audit_logs_from_collector(load_merged([collector_config_path()])[0])
    assert {(a.path, a.source) for a in logs} == {
        ("/var/log/nginx/audit.json.log", "nginx_access"),
        ("/var/log/nginx/error.log", "nginx_error"),
        ("/srv/app/audit.log", "app"),
        ("/var/log/postgresql/postgresql-*.log", "pgaudit"),
    }  # no `.1` twins, no container logs (Docker rotates those itself)


def test_cli_json_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = conf(tmp_path, GOOD.replace("    delaycompress\n", "").replace("rotate 14", "rotate 0"))
    code = main(["--logrotate", str(bad), "--audit-log", ACCESS.path, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 == out["exit_code"]
    assert {f["check"] for f in out["findings"]} == {"logrotate.compress",
                                                     "logrotate.rotate_count"}
    # --audit-log names the logs; "nginx" in the path makes the nginx reopen rule apply
    assert main(["--logrotate", str(conf(tmp_path, GOOD, "good")), "--audit-log",
                 ACCESS.path]) == 0


# ------------------------------------------------------------------- the collector's side of it


def _collector_variant(tmp: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The shipped collector config, changed, and accepted by the real `validate`."""
    cfg: dict[str, Any] = yaml.safe_load(collector_config_path().read_text())
    change(cfg)
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([str(tool_path("otelcol-audit-guard")), "validate", "--config",
                           str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return path


def test_collector_reading_only_the_live_name_warns(tmp_path: Path) -> None:
    def live_only(cfg: dict[str, Any]) -> None:
        receiver = cfg["receivers"]["file_log/nginx_access"]
        receiver["include"] = receiver["include"][:1]

    found = check_collector([_collector_variant(tmp_path, live_only)])
    warned = [f for f in found if f.level is not Level.OK]
    assert [(f.check, f.level) for f in warned] == [("collector.rotated_file", Level.WARN)]
    assert warned[0].title.startswith("file_log/nginx_access ")


def test_collector_batch_processor_before_a_persistent_queue_warns(tmp_path: Path) -> None:
    def with_batch(cfg: dict[str, Any]) -> None:
        cfg.setdefault("processors", {})["batch"] = {}
        cfg["service"]["pipelines"]["logs/audit"]["processors"].append("batch")

    found = check_collector([_collector_variant(tmp_path, with_batch)])
    assert [(f.check, f.level) for f in found if f.level is not Level.OK] == [
        ("collector.batch_before_queue", Level.WARN)]


def test_collector_rereading_a_half_written_copy_warns(tmp_path: Path) -> None:
    def read_whole_file(cfg: dict[str, Any]) -> None:
        cfg["receivers"]["file_log/app"]["on_truncate"] = "read_whole_file"

    found = check_collector([_collector_variant(tmp_path, read_whole_file)])
    assert [(f.check, f.level, f.title.split(":")[0]) for f in found
            if f.level is not Level.OK] == [("collector.on_truncate", Level.WARN, "file_log/app")]
