"""Format detection (audit_guard.sources.detect) directly, and through `audit-guard replay`: the
summary names each file's format and why, `--source FORMAT=FILE` overrides one file, and an app
log carrying request_id/status/path (plain or Docker-wrapped) is never read as Nginx."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_guard.sources.detect import (
    Detection,
    decide_content,
    detect,
    forced,
    line_evidence,
    object_evidence,
)
from tests.support.fuzz_corpus import FORMATS, SEEDS, mutated_lines
from tests.support.nginx_upstream import nginx_with_upstream, wait_for_lines

RID = "4bf92f3577b34da6a3ce929d0e0e4736"
DOCKER_TIME = "2025-11-26T14:00:01.123456789Z"


def dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


# App lines that carry the keys an HTTP access log has too (request_id, status, method, path,
# uri, remote_addr, ip, user_agent): every one must be read as app.
APP_LINES = {
    "issue": {"time": "2025-11-26T14:00:01.000Z", "level": "INFO", "event": "audit",
              "request_id": RID, "user_id": "u1", "app_id": "a1", "method": "POST",
              "path": "/v1/chat-messages", "status": 200},
    "structlog": {"event": "request finished", "level": "info",
                  "timestamp": "2025-11-26T14:00:01Z", "request_id": RID, "method": "GET",
                  "path": "/v1/datasets", "uri": "/v1/datasets?page=2", "status": 200,
                  "remote_addr": "10.0.0.7", "user_agent": "curl/8.0", "duration_ms": 12.5},
    "python-json-logger": {"asctime": "2025-11-26 14:00:01,123", "levelname": "INFO",
                           "name": "audit", "message": "access", "request_id": RID,
                           "status": "200", "uri": "/v1/files/upload", "remote_addr": "10.0.0.7",
                           "user_id": "u1"},
    "zap": {"level": "info", "ts": 1764165601.5, "logger": "http", "msg": "audit",
            "method": "DELETE", "path": "/v1/datasets/d1", "status": 204, "ip": "10.0.0.7",
            "request_id": RID, "latency_ms": 3},
    "dify json": orjson.loads(SEEDS["app_dify_json"][0]),
}
NGINX_LINES = {
    "shipped audit_json": orjson.loads(SEEDS["nginx_json"][0]),
    "the seed's short keys": orjson.loads(SEEDS["nginx_short"][0]),
    "classic main as JSON": {"time_local": "26/Nov/2025:14:00:01 +0000",
                             "remote_addr": "10.0.0.7", "request": "GET / HTTP/1.1",
                             "status": "200", "body_bytes_sent": "612",
                             "http_referer": "", "http_user_agent": "curl/8.0"},
    "method and uri by their variable names": {"request_method": "GET", "request_uri": "/",
                                               "status": "200", "request_id": RID},
}


def docker(lines: list[bytes]) -> list[bytes]:
    return [dumps({"log": line.decode() + "\n", "stream": "stdout", "time": DOCKER_TIME})
            for line in lines]


def cri(lines: list[bytes]) -> list[bytes]:
    return [b"2025-11-26T14:00:01.123456789+00:00 stdout F " + line for line in lines]


WRAPPERS = {"plain": lambda lines: lines, "docker": docker, "cri": cri}


# -- one line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_LINES)
def test_app_line_with_http_keys_votes_app(name: str) -> None:
    evidence = object_evidence(APP_LINES[name])
    assert evidence.vote == "app", evidence


@pytest.mark.parametrize("name", NGINX_LINES)
def test_nginx_line_votes_nginx(name: str) -> None:
    evidence = object_evidence(NGINX_LINES[name])
    assert evidence.vote == "nginx", evidence


def test_generic_keys_alone_tell_nothing() -> None:
    generic = {"request_id": RID, "status": "200", "uri": "/", "method": "GET", "path": "/",
               "user_id": "u1", "app_id": "a1", "time": "2025-11-26T14:00:01Z"}
    assert object_evidence(generic).vote is None
    # a log-record key beats the seed's short `ip`, which apps log too
    assert object_evidence({**generic, "level": "info", "ip": "10.0.0.7"}).vote == "app"
    # as many of each: a tie, which votes for neither
    tie = object_evidence({"message": "hello", "remote_addr": "10.0.0.7"})
    assert (tie.vote, tie.nginx, tie.app) == ("tie", ("remote_addr",), ("message",))


def test_cut_line_and_text_lines() -> None:
    shipped = SEEDS["nginx_json"][0]
    assert line_evidence(shipped[: shipped.index(b'"uri"')]).vote == "nginx"  # cut mid-write
    assert line_evidence(SEEDS["app_dify_text"][0]).vote == "app"
    assert line_evidence(b"GET / HTTP/1.1 200 (not json)").vote is None


# -- a file -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("name", APP_LINES)
def test_app_logs_are_app_plain_or_wrapped(name: str, wrapper: str) -> None:
    found = detect(WRAPPERS[wrapper]([dumps(APP_LINES[name])] * 3))
    assert (found.format, found.inner) == (
        ("app", None) if wrapper == "plain" else (wrapper, "app")), found
    assert "3/3 sampled lines" in found.why
    assert str(found).startswith("app JSON" + (
        "" if wrapper == "plain" else " inside " + ("Docker json-file" if wrapper == "docker"
                                                    else "CRI")))


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("name", NGINX_LINES)
def test_nginx_logs_are_nginx_plain_or_wrapped(name: str, wrapper: str) -> None:
    found = detect(WRAPPERS[wrapper]([dumps(NGINX_LINES[name])] * 3))
    assert (found.format, found.inner) == (
        ("nginx", None) if wrapper == "plain" else (wrapper, "nginx")), found
    assert found.label.startswith("nginx access JSON")


def test_reason_names_the_telling_keys() -> None:
    found = detect(SEEDS["nginx_short"] * 20)
    assert str(found) == "nginx access JSON (20/20 sampled lines have msec, request_time, ip)"
    issue = detect(docker([dumps(APP_LINES["issue"])] * 4))
    assert str(issue) == "app JSON inside Docker json-file (4/4 sampled lines have level, event)"


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_dify_text_log(wrapper: str) -> None:
    found = detect(WRAPPERS[wrapper](list(SEEDS["app_dify_text"])))
    assert found.label.startswith("app text (Dify)")
    assert (found.inner or found.format) == "app"


@pytest.mark.parametrize("fmt", ["pgaudit_stderr", "pgaudit_csvlog", "pgaudit_jsonlog"])
def test_postgres_logs(fmt: str) -> None:
    found = detect(list(SEEDS[fmt]))
    assert found.format == "pgaudit"
    assert found.why.startswith("3/3 sampled lines carry pgaudit's AUDIT:")


def test_app_json_with_timestamp_and_message_is_not_postgres_jsonlog() -> None:
    line = dumps({"timestamp": "2025-11-26T14:00:01Z", "message": "audit", "request_id": RID,
                  "status": 200, "path": "/v1/x"})
    assert detect([line] * 3).format == "app"


def test_nginx_error_log() -> None:
    found = detect(list(SEEDS["nginx_error"]))
    assert (found.format, found.label) == ("nginx_error", "nginx error log")


def test_ties_splits_and_unknowns_are_undecided_with_the_reason() -> None:
    tie = detect([dumps({"message": "x", "remote_addr": "10.0.0.7"})] * 3)
    assert tie.format is None and "3 with as many Nginx keys as app keys" in tie.why
    unknown = detect([dumps({"time": 1764165601, "user": "u1", "url": "/x", "status": 200})])
    assert unknown.format is None and unknown.label == "format not recognized"
    assert "none of 1 sampled line(s)" in unknown.why
    nginx, app = dumps(NGINX_LINES["shipped audit_json"]), dumps(APP_LINES["issue"])
    split = detect([nginx, nginx, nginx, app, app])
    assert split.format is None and split.why.startswith("split: 3/5 sampled lines look like")
    # a clear majority decides, and the dissent is named
    mostly = detect([nginx] * 4 + [app])
    assert mostly.format == "nginx" and mostly.why.endswith("; 1 look like an app")
    assert decide_content([]).format is None
    wrapped = detect(docker([dumps({"message": "x", "remote_addr": "1"})]))
    assert wrapped.format is None and wrapped.label.startswith("Docker json-file log")


def test_what_replay_cannot_read_inside_a_container_log_is_said() -> None:
    found = detect(docker(list(SEEDS["pgaudit_stderr"])))
    assert (found.format, found.label, found.forceable) == (
        None, "PostgreSQL stderr inside Docker json-file", False)
    assert found.why.endswith("replay the container's output instead (docker logs CONTAINER "
                              "> FILE)")
    assert detect([]) == Detection("nginx", "empty", "no line to read")  # no record either way


def test_forced_formats() -> None:
    issue = [dumps(APP_LINES["issue"])]
    # docker forced: the wrapped lines are still detected
    assert forced("docker", docker(issue), "--source docker") == Detection(
        "docker", "app JSON inside Docker json-file",
        "--source docker; inside: 1/1 sampled lines have level, event", inner="app")
    # app (or nginx) forced on a container log applies to the lines inside it
    assert forced("nginx", cri(issue), "--source nginx=x.log") == Detection(
        "cri", "nginx access inside CRI", "--source nginx=x.log", inner="nginx")
    assert forced("app", issue, "--source app").format == "app"
    # docker forced but its lines tell nothing: read as app (as the service does), said so
    unknown = forced("docker", docker([b"hello"]), "--source docker")
    assert (unknown.format, unknown.inner, unknown.label) == (
        "docker", "app", "app inside Docker json-file")
    assert unknown.why.startswith("--source docker; Docker json-file log, wrapped lines' "
                                  "format not recognized: none of 1 sampled")
    assert unknown.why.endswith("; read as app, as the service reads container logs")
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        forced("csv", issue, "--source csv")


# Each seed format of the fuzz corpus → what detection must say for its clean lines.
EXPECTED = {"nginx_json": "nginx", "nginx_short": "nginx", "nginx_error": "nginx_error",
            "app_dify_json": "app", "app_dify_text": "app", "app_generic": "app",
            "docker": "docker", "cri": "cri", "pgaudit_stderr": "pgaudit",
            "pgaudit_csvlog": "pgaudit", "pgaudit_jsonlog": "pgaudit"}


def test_every_fuzz_seed_format_is_detected() -> None:
    assert set(EXPECTED) == set(FORMATS)
    for fmt, expected in EXPECTED.items():
        assert detect(list(SEEDS[fmt])).format == expected, fmt


@pytest.mark.parametrize("fmt", list(EXPECTED))
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rnd=st.randoms(use_true_random=False), count=st.integers(1, 40))
def test_detection_of_mutated_lines_never_raises(fmt: str, rnd: random.Random,
                                                 count: int) -> None:
    """Cut, flipped, huge, deeply nested lines: a verdict or an undecided one, never an
    exception; and a file never turns into the other side of nginx vs app."""
    found = detect(mutated_lines(fmt, count, rnd, allow_huge=rnd.random() < 0.1))
    assert isinstance(found, Detection) and found.why
    other = {"nginx": "app", "app": "nginx"}.get(EXPECTED[fmt])
    assert other is None or (found.inner or found.format) != other, found


# -- through `audit-guard replay` -------------------------------------------------------------


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audit_guard.cli", "replay", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1",
                               "PYTHONPATH": str(Path(__file__).resolve().parents[3])})


def rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_summary_names_each_files_format(tmp_path: Path) -> None:
    access = write(tmp_path / "access.log", list(SEEDS["nginx_short"]))
    app = write(tmp_path / "app.log", docker([dumps(APP_LINES["issue"])]))
    errors = write(tmp_path / "error.log", list(SEEDS["nginx_error"]))
    result = run(access, app, errors)
    assert result.returncode in (0, 1), result.stderr
    assert f"    {access}: nginx access JSON (1/1 sampled lines have msec, request_time, ip)\n" \
        in result.stderr
    assert (f"    {app}: app JSON inside Docker json-file (1/1 sampled lines have level, "
            "event)\n") in result.stderr
    assert f"    {errors}: nginx error log (3/3 sampled lines have" in result.stderr
    assert {r["source"] for r in rows(result) if r["file"] == str(app)} == {"app"}


def test_per_file_override(tmp_path: Path) -> None:
    generic = write(tmp_path / "generic.log",
                    [dumps({"time": 1764165601, "user": "u1", "url": "/x", "status": 200})])
    access = write(tmp_path / "access.log", list(SEEDS["nginx_short"]))
    undecided = run(access, generic)
    assert undecided.returncode == 2
    assert f"{generic}: format not recognized: none of 1 sampled line(s)" in undecided.stderr
    assert f"--source FORMAT={generic}" in undecided.stderr
    assert [r["file"] for r in rows(undecided)] == [str(access)]  # the other file still read
    forced_run = run("--source", f"app={generic}", access, generic)
    assert forced_run.returncode in (0, 1), forced_run.stderr
    assert [(r["file"], r["source"]) for r in rows(forced_run)] == [
        (str(access), "nginx"), (str(generic), "app")]
    assert f"    {generic}: app (--source app={generic})\n" in forced_run.stderr
    # the override names the file however it was spelled; --source FORMAT still covers the rest
    both = run("--source", "app", "--source", "nginx=./access.log", "access.log", "generic.log",
               cwd=tmp_path)
    assert [r["source"] for r in rows(both)] == ["nginx", "app"], both.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "bogus"], "--source bogus: unknown format 'bogus'; accepted formats: "
                            "nginx, nginx_error, app, pgaudit, docker, cri, journald, as FORMAT"),
    (["--source", "csv=F"], "--source csv=F: unknown format 'csv'"),
    (["--source", "auto=F"], "--source auto=F: unknown format 'auto'"),
    (["--source", "app="], "--source app=: no file after '='"),
    (["--source", "app=other.log"], "--source app=other.log: other.log is not one of the files"),
    (["--source", "app", "--source", "nginx"], "--source app and --source nginx: give one"),
    (["--source", "app=F", "--source", "nginx=F"], "--source gives F two formats: app and nginx"),
])
def test_bad_source_values_fail_fast(tmp_path: Path, args: list[str], message: str) -> None:
    log = write(tmp_path / "F", list(SEEDS["nginx_short"]))
    result = run(*args, "F", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert f"audit-guard replay: {message}" in result.stderr
    assert log.exists()


def test_help_documents_the_per_file_override() -> None:
    result = subprocess.run([sys.executable, "-m", "audit_guard.cli", "replay", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert "--source FORMAT[=FILE]" in result.stdout and "repeatable" in result.stdout


# -- the issue's case, with real nginx --------------------------------------------------------


def app_audit_line(dify: dict[str, Any]) -> bytes:
    """The issue's app audit line, from what the demo app logged for the same request."""
    attrs = dify["attributes"]
    return dumps({"time": dify["ts"], "level": "INFO", "event": "audit",
                  "request_id": dify["trace_id"], "user_id": dify["identity"]["user_id"],
                  "app_id": attrs["app_id"], "method": attrs["method"], "path": attrs["path"],
                  "status": attrs["status"]})


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_nginx_log_and_docker_wrapped_app_log_give_no_false_findings(tmp_path: Path) -> None:
    requests = 30
    with nginx_with_upstream(tmp_path) as stack:
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            for n in range(requests):
                answer = client.get(f"/v1/parameters?user=u{n}") if n % 2 else client.post(
                    "/v1/completion-messages",
                    json={"inputs": {}, "query": "hi", "user": f"u{n}",
                          "response_mode": "blocking"})
                assert answer.status_code == 200, answer.text
        access_lines = wait_for_lines(stack.paths.access_log, requests)
        app_records = wait_for_lines(stack.app_log, requests)
    assert {a["request_id"] for a in access_lines} == {r["trace_id"] for r in app_records}
    app_log = write(tmp_path / "0123abcd-json.log",
                    docker([app_audit_line(r) for r in app_records]))
    result = run(stack.paths.access_log, app_log)
    assert result.returncode in (0, 1), result.stderr
    out = rows(result)
    assert sorted(r["source"] for r in out if r["file"] == str(app_log)) == ["app"] * requests
    assert not [r for r in out if "duplicate" in r["flags"]]
    assert not [r for r in out if "missing_record" in r["flags"]]
    assert f"{app_log}: app JSON inside Docker json-file ({requests}/{requests} sampled " \
           "lines have level, event)" in result.stderr
    # The same records in a plain file: the same verdicts.
    plain = write(tmp_path / "app.jsonl", [app_audit_line(r) for r in app_records])
    plain_out = rows(run(stack.paths.access_log, plain))
    assert [r["flags"] for r in plain_out if r["file"] == str(plain)] == \
        [r["flags"] for r in out if r["file"] == str(app_log)]
    assert not [r for r in plain_out if {"duplicate", "missing_record"} & set(r["flags"])]
    # Reconciliation is armed: an app record left out is reported, once.
    dropped = write(tmp_path / "dropped.jsonl", [app_audit_line(r) for r in app_records[1:]])
    missing = [r for r in rows(run(stack.paths.access_log, dropped))
               if "missing_record" in r["flags"]]
    assert [r["trace_id"] for r in missing] == [app_records[0]["trace_id"]]
    # The bug this guards against: read as Nginx, every app record is its request's duplicate.
    wrong = rows(run("--source", f"nginx={app_log}", stack.paths.access_log, app_log))
    assert sum("duplicate" in r["flags"] for r in wrong) == requests
