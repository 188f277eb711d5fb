"""The scale-out collector config gives every record the trace id audit-guard gives it.

The real collector with collector-config/audit-guard-scaleout.yaml reads real files (nginx
access log, app audit log, PostgreSQL log with pgaudit lines); a `file` exporter beside
`load_balancing` records what it routes (each record's trace id). `audit-guard replay` on the
same files says which trace id the processor gives each record. Where the processor's id comes
from the line (nginx $request_id, the app's trace id, a traceparent), the two must be equal —
that is what puts a request's records on one instance; where it does not, the routing id must
still be deterministic and the same for every record naming the same request id.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from demo.backends import repo_root, start_collector
from demo.procs import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SCALEOUT = repo_root() / "collector-config" / "audit-guard-scaleout.yaml"

A, B, C, D, E = ("4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c",
                 "5d41402abc4b2a76b9719d911017c592", "7d793037a0760186574b0282f2f435e7",
                 "9e107d9d372bb6826bd81d3542a419d6")
NGINX = [
    '{"msec":"1764165601.250","request_id":"' + A + '","request_method":"GET",'
    '"request_uri":"/v1/datasets","status":"200","server_name":"dify"}',
    # cut after its id: routed (and traced) by the id written before the cut
    '{"msec":"1764165601.300","request_id":"' + B + '","request_method":"POST","request_u',
    # cut before its id: nothing to route by but the line itself
    '{"msec":"1764165601.3',
    # an id that is not a trace id: the same routing id as the app record naming it
    '{"msec":"1764165601.400","request_id":"req-77","request_method":"GET",'
    '"request_uri":"/v1/parameters","status":"200"}',
    # upper-case hex: the same trace as lower-case
    '{"msec":"1764165601.500","request_id":"' + C.upper() + '","request_method":"GET",'
    '"request_uri":"/v1/x","status":"200"}',
]
APP = [
    # Dify JSON log: its trace_id is nginx's request id (the shipped traceparent)
    '{"ts":"2025-11-26T14:00:01.251Z","severity":"INFO","service":"api","message":"GET '
    '/v1/datasets 200 1.0 ' + A + '","trace_id":"' + A + '","identity":{"user_id":"u1"}}',
    # only a traceparent
    '{"time":"2025-11-26T14:00:01Z","path":"/v1/x","traceparent":"00-' + D
    + '-00f067aa0ba902b7-01"}',
    # a request id that is not a trace id AND a traceparent: the traceparent wins
    '{"time":"2025-11-26T14:00:01Z","request_id":"req-9","traceparent":"00-' + E
    + '-00f067aa0ba902b7-01"}',
    # the request id nginx logged for req-77
    '{"time":"2025-11-26T14:00:01Z","request_id":"req-77","path":"/v1/parameters"}',
    # Dify's text format
    "2025-11-26 14:00:01.250 INFO [MainThread] [app.py:10] " + C + " - GET /v1/x 200 1.0 " + C,
]
PG_PREFIX = "2025-11-26 14:00:01.250 UTC [4242] app@dify LOG:  AUDIT: SESSION,"
PGAUDIT = [
    PG_PREFIX + "1,1,WRITE,UPDATE,,,\"UPDATE items SET name = 'x' WHERE id = 1 "
    "/*traceparent='00-" + A + "-00f067aa0ba902b7-01'*/;\",<none>",
    # what sqlcommenter writes: URL-encoded values, other keys around it
    PG_PREFIX + "2,1,WRITE,UPDATE,,,\"UPDATE items SET name = 'y' WHERE id = 1 "
    "/*db_driver='psycopg2%3A2.9.9',traceparent='00%2D" + B + "%2Db7ad6b7169203331%2D01',"
    "tracestate='congo%3Dt61rcWkgMzE'*/;\",<none>",
    PG_PREFIX + "3,1,READ,SELECT,,,\"SELECT 1;\",<none>",
]


def _replay_ids(source: str, path: Path) -> dict[int, str]:
    """line number → the trace id the processor gives that record."""
    proc = subprocess.run(
        [sys.executable, "-m", "audit_guard.cli", "replay", "--source", source, str(path)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return {o["line"]: o["trace_id"] for o in map(orjson.loads, proc.stdout.splitlines())}


def _routed(observed: Path) -> dict[str, str]:
    """body → trace id of every log record the collector handed to load_balancing."""
    out: dict[str, str] = {}
    if not observed.exists():
        return out
    for line in observed.read_bytes().splitlines():
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:  # the exporter is still writing this one
            continue
        for rl in request.get("resourceLogs", []):
            for sl in rl.get("scopeLogs", []):
                for rec in sl.get("logRecords", []):
                    out[rec["body"]["stringValue"]] = rec.get("traceId", "")
    return out


@pytest.fixture(scope="module")
def routed(tmp_path_factory) -> tuple[dict[str, str], dict[str, dict[int, str]], Path]:
    wd = tmp_path_factory.mktemp("routing")
    files = {"nginx": wd / "access.json.log", "app": wd / "app.json.log",
             "pgaudit": wd / "postgresql.log"}
    for source, lines in (("nginx", NGINX), ("app", APP), ("pgaudit", PGAUDIT)):
        files[source].write_text("\n".join(lines) + "\n")
    observed = wd / "routed.json"
    overlay = wd / "observe.yaml"
    overlay.write_text(
        "exporters:\n  file/routed:\n    path: " + str(observed) + "\n    format: json\n"
        "    flush_interval: 100ms\n"
        "service:\n  pipelines:\n    logs/audit:\n"
        "      exporters: [load_balancing/processors, file/routed]\n")
    # Both instances are closed ports: what this test reads is the file exporter's copy.
    ports = {f"AUDIT_GUARD_PROCESSOR_{i}_ENDPOINT": f"127.0.0.1:{free_port()}" for i in (0, 1)}
    proc, _ = start_collector(
        wd, access_log=files["nginx"], app_log=files["app"], pg_log=files["pgaudit"],
        processor_endpoint=f"127.0.0.1:{free_port()}", traces_endpoint=f"127.0.0.1:{free_port()}",
        vts_target=f"127.0.0.1:{free_port()}", overlays=[SCALEOUT, overlay], extra_env=ports)
    try:
        total = len(NGINX) + len(APP) + len(PGAUDIT)
        wait_until(lambda: len(_routed(observed)) >= total, 60, "the collector to route all")
    finally:
        proc.stop()
    replayed = {source: _replay_ids(source, path) for source, path in files.items()}
    return _routed(observed), replayed, wd


def _pairs(routed, source: str, lines: list[str]) -> list[tuple[str, str, str]]:
    """(line, routing trace id, processor trace id) per line of a source."""
    by_body, replayed, _ = routed
    return [(line, by_body[line], replayed[source][n]) for n, line in enumerate(lines, 1)]


def test_ids_read_from_the_line_equal_the_processors(routed) -> None:
    expected = {
        "nginx": [A, B, None, None, C],
        "app": [A, D, E, None, C],
        "pgaudit": [A, B, None],
    }
    lines = {"nginx": NGINX, "app": APP, "pgaudit": PGAUDIT}
    for source, ids in expected.items():
        for (line, routing, processor), want in zip(
                _pairs(routed, source, lines[source]), ids, strict=True):
            if want is None:
                continue
            assert routing == want, (source, line)
            assert processor == want, (source, line)


def test_a_request_id_that_is_no_trace_id_routes_its_records_together(routed) -> None:
    nginx = _pairs(routed, "nginx", NGINX)[3]
    app = _pairs(routed, "app", APP)[3]
    assert nginx[1] == app[1] != ""
    assert nginx[1] == hashlib.sha256(b"request_id:req-77").hexdigest()[:32]
    assert nginx[2] == app[2]  # the processor joins them too (by its own hash)


def test_a_line_without_an_id_still_goes_somewhere_deterministic(routed) -> None:
    for source, lines, n in (("nginx", NGINX, 2), ("pgaudit", PGAUDIT, 2)):
        line, routing, _ = _pairs(routed, source, lines)[n]
        assert routing == hashlib.sha256(line.encode()).hexdigest()[:32], source


def test_the_raw_line_is_not_changed(routed) -> None:
    by_body, _, _ = routed
    assert set(NGINX + APP + PGAUDIT) <= set(by_body)
