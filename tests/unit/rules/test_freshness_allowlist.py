"""The seed article's §4.4 rules: freshness (`age_s`, the built-in `stale_event`) and an
`event_type` allow-list (the documented example in docs/rules.md), through the real pipeline and
`audit-guard replay`, including the clock-drift edge cases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.decode import APP
from audit_guard.pipeline import Pipeline
from audit_guard.record import RecordBatch
from audit_guard.rules import RuleSet, batch_record_view
from tests.support.otlp_doubles import logs_request

ROOT = Path(__file__).resolve().parents[3]
NS = 1_000_000_000
T0 = 1764165600  # 2025-11-26T14:00:00Z
STALE = "rule:stale_event"


def event(offset_ns: int, event_type: str | None = "user.login", **extra: Any) -> str:
    """An app audit line written at T0 + offset_ns (nanosecond-exact ISO time)."""
    secs, ns = divmod(T0 * NS + offset_ns, NS)
    minute, second = divmod(secs - T0, 60)
    line: dict[str, Any] = {"time": f"2025-11-26T14:{minute:02d}:{second:02d}.{ns:09d}Z",
                            "method": "POST", "path": "/v1/chat-messages", "status": 200,
                            "user_id": "u1", "app_id": "a1", **extra}
    if event_type is not None:
        line["event_type"] = event_type
    return orjson.dumps(line).decode()


def stale_rows(lines: list[str], received_ns: int) -> list[int]:
    pipeline = Pipeline(load_settings())
    batch = pipeline.parse(APP, list(lines))
    pipeline.correlate(batch, received_ns, None, spans=False)
    return sorted(i for i, found in batch.flags.items() if STALE in found)


# -- freshness: the edges of 35 s old and 5 s ahead --------------------------------------------

RECEIVED = T0 * NS + 100 * NS


@pytest.mark.parametrize(("age_ns", "stale"), [
    (0, False),
    (35 * NS, False),  # exactly 35 s old: not older than now − 35 s
    (35 * NS + 1, True),  # one nanosecond more is
    (34 * NS + 999_999_999, False),
    (36 * NS, True),
    (90 * NS, True),
    (-5 * NS, False),  # 5 s ahead: within the clock-drift tolerance
    (-5 * NS - 1, True),  # beyond it: the writer's clock is ahead, the time is not trusted
    (-4 * NS - 999_999_999, False),
    (-60 * NS, True),
])
def test_stale_event_edges(age_ns: int, stale: bool) -> None:
    line = event(100 * NS - age_ns)
    assert stale_rows([line], RECEIVED) == ([0] if stale else [])


def test_freshness_is_scoped_to_records_carrying_an_event_type() -> None:
    old = 100 * NS - 60 * NS
    lines = [event(old), event(old, event_type=None), event(old, event_type=""),
             event(100 * NS), event(old, event_type="x")]
    # "" is an event_type that is there (empty): the record claims to be an event
    assert stale_rows(lines, RECEIVED) == [0, 2, 4]


def test_a_record_without_a_time_is_never_stale() -> None:
    line = orjson.dumps({"method": "GET", "path": "/v1/x", "event_type": "user.login"}).decode()
    assert stale_rows([line], RECEIVED) == []


def test_age_s_in_the_record_view_and_in_a_batch_without_receive_time() -> None:
    batch = RecordBatch(APP, 2, time_unix_nano=[T0 * NS, None])
    assert batch_record_view(batch, 0)["age_s"] is None  # nothing received it
    batch.received_unix_nano = T0 * NS + 36 * NS + 500_000_000
    assert batch_record_view(batch, 0)["age_s"] == 37  # whole seconds, away from zero
    batch.received_unix_nano = T0 * NS - 500_000_000
    assert batch_record_view(batch, 0)["age_s"] == -1
    assert batch_record_view(batch, 1)["age_s"] is None
    assert batch.slice(1, 2).received_unix_nano == batch.received_unix_nano


def test_the_service_measures_age_against_the_collectors_read_time() -> None:
    """Not the processor's wall clock: a retried request gives the same flags."""
    lines = [event(0), event(50 * NS)]
    request = logs_request(*lines, source="app")
    # The collector read the request 60 s after T0: the first event is 60 s old, the second 10.
    request.resource_logs[0].scope_logs[0].log_records[0].observed_time_unix_nano = (
        T0 * NS + 60 * NS)
    for now in (T0 * NS + 61 * NS, T0 * NS + 3600 * NS):  # a retry an hour later: same output
        out, _count = Pipeline(load_settings()).process_logs(request, now)
        traces = ExportTraceServiceRequest.FromString(out)
        spans = [s for rs in traces.resource_spans for ss in rs.scope_spans for s in ss.spans]
        found = [[v.string_value for a in s.attributes if a.key == "audit.flags"
                  for v in a.value.array_value.values] for s in spans]
        assert [STALE in f for f in found] == [True, False]


# -- replay: the event-time clock --------------------------------------------------------------


def replay(*args: str | Path) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "audit_guard.cli", "replay", *map(str, args)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode in (0, 1), result.stderr
    return [orjson.loads(x) for x in result.stdout.splitlines()]


def test_replay_flags_an_event_written_long_after_its_time(tmp_path: Path) -> None:
    # In file order: events at 0 s, 50 s, then one stamped 10 s (written 40 s late: held back
    # or replayed), one stamped 47 s (3 s behind the clock: fine).
    app = tmp_path / "app.log"
    app.write_text("\n".join(event(s * NS) for s in (0, 50, 10, 47, 51)) + "\n")
    rows = replay(app, "--source", f"app={app}")
    assert [STALE in r["flags"] for r in rows] == [False, False, True, False, False]


# -- the allow-list: the example rule of docs/rules.md -----------------------------------------


def documented_allow_list() -> RuleSet:
    text = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S)
                 if "event_type_not_allowed" in b)
    return RuleSet.from_yaml(block, "docs/rules.md")


@pytest.mark.parametrize(("event_type", "matches"), [
    ("user.login", False),
    ("dataset.write", False),
    ("user.sudo", True),
    ("USER.LOGIN", True),  # exact values: case matters
    ("", True),
    (7, True),  # not a string: not on the list
    ({"kind": "user.login"}, True),
    (None, False),  # no event_type at all: not an event, out of scope
])
def test_documented_allow_list(event_type: Any, matches: bool) -> None:
    rules = RuleSet([*RuleSet.builtin(), *documented_allow_list()])
    extra = {} if event_type is None else {"event_type": event_type}
    line = orjson.dumps({"time": "2025-11-26T14:00:00Z", "method": "POST", "path": "/v1/x",
                         "status": 200, "user_id": "u1", "app_id": "a1", **extra}).decode()
    pipeline = Pipeline(load_settings())
    batch = pipeline.parse(APP, [line])
    errors: Counter[str] = Counter()
    found = rules.evaluate(batch, errors)
    assert ("event_type_not_allowed" in found.get(0, [])) is matches
    assert not errors


def test_allow_list_is_not_evaluated_on_nginx_records() -> None:
    rules = documented_allow_list()
    batch = RecordBatch("nginx", 1, fields=[{"event_type": "user.sudo"}])
    assert rules.evaluate(batch) == {}


def test_the_admin_rule_test_takes_age_s() -> None:
    """POST /api/rules/test evaluates a record as rules see it, age_s included."""
    from fastapi.testclient import TestClient

    from audit_guard.admin import AdminState, create_app
    from audit_guard.rules import RuleRegistry

    admin = load_settings().admin
    app = create_app(AdminState(admin.flags_buffer, admin.requests_kept,
                                admin.records_per_request),
                     RuleRegistry(), token="t" * 32, rules_files=[], include_builtin=True)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {'t' * 32}"}
    record = {"source": "app", "fields": {"event_type": "user.login"}}
    for age, stale in ((36, True), (35, False), (-6, True), (None, False)):
        resp = client.post("/api/rules/test", headers=auth,
                           json={"record": {**record, "age_s": age}})
        assert resp.status_code == 200, resp.text
        assert ("stale_event" in resp.json()["matches"]) is stale, age
