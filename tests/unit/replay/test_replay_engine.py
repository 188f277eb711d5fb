"""Replay drives the service's own stateful stages with the records' own times
(audit_guard.replay.engine): verdicts do not depend on the order the files are given in, a late
app record is reported as the service reports it, and the windows are the settings' own."""

from __future__ import annotations

import io
from itertools import permutations
from pathlib import Path

import orjson

from audit_guard.config import load_settings
from audit_guard.replay import replay
from audit_guard.replay.engine import STEP_SLACK_NS

T0 = 1764165600  # 2025-11-26T14:00:00Z
RIDS = [f"{n:02x}" * 16 for n in range(0xA1, 0xA9)]
AUDITED = "/v1/chat-messages"


def nginx_line(rid: str, at: float, connection: int = 1) -> str:
    return orjson.dumps({"msec": f"{at:.3f}", "request_id": rid, "request_method": "POST",
                         "request_uri": AUDITED, "status": "200", "user_id": "u1",
                         "app_id": "a1", "request_completion": "OK",
                         "connection": str(connection)}).decode()


def app_line(rid: str, at: float) -> str:
    ts = f"2025-11-26T14:{int(at - T0) // 60:02d}:{(at - T0) % 60:06.3f}Z"
    return orjson.dumps({"ts": ts, "severity": "INFO", "service": "api",
                         "caller": "ext_request_logging.py:80",
                         "message": f"POST {AUDITED} 200 12.5 {rid}", "trace_id": rid,
                         "identity": {"tenant_id": "t1", "user_id": "u1",
                                      "user_type": "end_user"},
                         "attributes": {"app_id": "a1"}}).decode()


def error_line(at: int, connection: int) -> str:
    stamp = f"2025/11/26 14:{(at - T0) // 60:02d}:{(at - T0) % 60:02d}"
    return (f'{stamp} [error] 7#7: *{connection} upstream prematurely closed connection while '
            f'reading upstream, client: 10.0.0.1, server: _, request: "POST {AUDITED} '
            f'HTTP/1.1", upstream: "http://127.0.0.1:5001{AUDITED}", host: "dify.local"')


def run(files: list[Path], **settings: object) -> tuple[int, list[dict], str]:
    out, err = io.BytesIO(), io.StringIO()
    code = replay(files, settings=load_settings(**settings), out=out, err=err)
    return code, [orjson.loads(x) for x in out.getvalue().splitlines()], err.getvalue()


def verdicts(records: list[dict]) -> set[tuple]:
    return {(r["source"], r["trace_id"], r["line"], tuple(r["flags"])) for r in records}


def corpus(tmp_path: Path) -> list[Path]:
    """Nginx requests over 70 s: RIDS[0] answered in time, RIDS[1] 45 s late, RIDS[2] never,
    RIDS[3] cut (its error line), RIDS[4] answered before nginx logged it, RIDS[5] after the
    last record of every file (decided at the end)."""
    access = tmp_path / "access.log"
    access.write_text("\n".join([
        nginx_line(RIDS[0], T0 + 1), nginx_line(RIDS[1], T0 + 2), nginx_line(RIDS[2], T0 + 3),
        nginx_line(RIDS[3], T0 + 4.2, connection=9), nginx_line(RIDS[4], T0 + 5),
        nginx_line(RIDS[5], T0 + 70),
    ]) + "\n")
    app = tmp_path / "app.log"
    app.write_text("\n".join([
        app_line(RIDS[0], T0 + 0.9), app_line(RIDS[3], T0 + 4), app_line(RIDS[4], T0 + 4.5),
        app_line(RIDS[1], T0 + 47),
    ]) + "\n")
    errors = tmp_path / "error.log"
    errors.write_text(error_line(T0 + 4, connection=9) + "\n"
                      + error_line(T0 + 30, connection=77) + "\n")  # joins nothing
    return [access, app, errors]


def test_verdicts_do_not_depend_on_the_order_of_the_files(tmp_path: Path) -> None:
    files = corpus(tmp_path)
    results = [run(list(order)) for order in permutations(files)]
    first = verdicts(results[0][1])
    assert all(verdicts(records) == first for _, records, _ in results)
    assert all(code == 1 for code, _, _ in results)


def test_the_service_s_verdicts_in_event_time(tmp_path: Path) -> None:
    code, records, err = run(corpus(tmp_path))
    by = {(r["source"], r["trace_id"]): r["flags"] for r in records if r["file"] is not None}
    missing = [r["trace_id"] for r in records if r["file"] is None]
    # RIDS[1]'s app record came 45 s after its request: reported missing, then flagged late.
    assert missing == [RIDS[1], RIDS[2], RIDS[5]]
    assert "late_record" in by[("app", RIDS[1])]
    assert "late_record" not in by[("app", RIDS[0])]
    # The cut stream's error line joined its access record; the other is reported on its own.
    assert "truncated:upstream_closed" in by[("nginx", RIDS[3])]
    unjoined = [r for r in records if r["source"] == "nginx_error"]
    assert [r["fields"]["connection"] for r in unjoined] == [77]
    assert "1 error-log event(s) joined" in err and "3 audited request(s) with no app" in err
    assert code == 1


def test_the_windows_are_the_settings_own(tmp_path: Path) -> None:
    files = corpus(tmp_path)
    _, records, _ = run(files, reconcile={"window_s": 60})
    assert [r["trace_id"] for r in records if r["file"] is None] == [RIDS[2], RIDS[5]]
    _, narrow, _ = run(files, reconcile={"window_s": 2, "late_horizon_s": 3600})
    # RIDS[4]'s app record came 0.5 s before nginx logged the request: still in time.
    assert RIDS[4] not in [r["trace_id"] for r in narrow if r["file"] is None]


def test_requests_before_the_first_app_record_are_held_one_window(tmp_path: Path) -> None:
    """As the service arms: the requests of the start-up window (one window after the first
    request) are held and checked once an app record comes; a request older than a window
    when it comes is dropped, and so is one after the start-up window (an app log switched on
    later is not blamed for the requests before it)."""
    access = tmp_path / "access.log"
    access.write_text("\n".join([nginx_line(RIDS[0], T0 + 1), nginx_line(RIDS[1], T0 + 10),
                                 nginx_line(RIDS[2], T0 + 35)]) + "\n")
    app = tmp_path / "app.log"
    app.write_text(app_line(RIDS[3], T0 + 36) + "\n")
    _, records, _ = run([access, app])
    assert [r["trace_id"] for r in records if r["file"] is None] == [RIDS[1]]


def test_a_busy_file_does_not_run_ahead_of_another(tmp_path: Path) -> None:
    """Thousands of Nginx records before the app log's first one: the app records still meet
    their requests (a step never runs more than STEP_SLACK_NS past another file's next row)."""
    assert STEP_SLACK_NS <= 1_000_000_000
    n = 3000
    access = tmp_path / "access.log"
    access.write_text("\n".join(nginx_line(f"{i:032x}", T0 + i * 0.01) for i in range(n)) + "\n")
    app = tmp_path / "app.log"
    app.write_text("\n".join(app_line(f"{i:032x}", T0 + i * 0.01 + 0.005)
                             for i in range(n)) + "\n")
    code, records, _ = run([access, app], reconcile={"window_s": 1, "late_horizon_s": 3600})
    assert not [r for r in records if r["file"] is None]
    assert not [r for r in records if "late_record" in r["flags"]]


def test_a_source_that_falls_silent_is_named_in_the_summary(tmp_path: Path) -> None:
    """The service's silence rule (reconcile.silence_threshold_s), in event time: the app log
    stops for 200 s while Nginx requests go on, then comes back."""
    access = tmp_path / "access.log"
    app = tmp_path / "app.log"
    times = [T0 + i * 5 for i in range(80)]  # a request every 5 s for 400 s
    access.write_text("\n".join(nginx_line(f"{i:032x}", t) for i, t in enumerate(times)) + "\n")
    app.write_text("\n".join(app_line(f"{i:032x}", t + 0.1) for i, t in enumerate(times)
                             if not 20 <= i < 60) + "\n")
    _, _, err = run([access, app], reconcile={"silence_threshold_s": 120})
    assert "silent: app wrote nothing from 2025-11-26T14:01:35.100Z until " \
           "2025-11-26T14:05:00.100Z (205 s) while traffic went on" in err
    _, _, quiet = run([access, app], reconcile={"silence_threshold_s": 300})
    assert "silent:" not in quiet
