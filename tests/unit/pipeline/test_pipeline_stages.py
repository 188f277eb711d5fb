"""The pipeline's stages after parse are a named list run in order (issue #17): each can be run
on its own, and running them by hand is what `check` does."""

from __future__ import annotations

import orjson

from audit_guard.config import load_settings
from audit_guard.correlate.duplicates import Origin, content_digest
from audit_guard.decode import NGINX, group_logs
from audit_guard.pipeline import Pipeline
from tests.support.otlp_doubles import logs_request

LINES = [orjson.dumps({"msec": "1764165600.500", "request_id": f"{i:032x}",
                       "request_method": "POST", "request_uri": "/v1/chat-messages",
                       "status": "200", "user_id": "" if i == 2 else "u1", "app_id": "a1",
                       "request_completion": "OK"}).decode() for i in range(1, 5)]
LINES.append(LINES[0])  # a line written twice


def test_the_stages_and_their_order() -> None:
    assert [name for name, _ in Pipeline(load_settings()).stages] == [
        "truncation", "fields", "lag", "route", "ids", "duplicates", "rules", "redaction"]


def test_running_the_stages_by_hand_is_check() -> None:
    rows = group_logs(logs_request(*LINES))[NGINX]
    by_check = Pipeline(load_settings())
    checked = by_check.check(by_check.parse(NGINX, rows.bodies))
    by_hand = Pipeline(load_settings())
    batch = by_hand.parse(NGINX, rows.bodies)
    origin = Origin(content_digest(batch.raw), None)
    seen = []
    for name, stage in by_hand.stages:
        stage(batch, origin)
        seen.append((name, sum(map(len, batch.flags.values()))))
    assert batch.flags == checked.flags and batch.span_id == checked.span_id
    assert "duplicate" in batch.flags[4] and "missing_field:user_id" in batch.flags[1]
    # each stage adds what is its own: ids before duplicates, duplicates before rules
    assert dict(seen)["ids"] < dict(seen)["duplicates"]
