"""The batch (columnar) fast paths must give exactly what record-at-a-time processing gives.

A big mixed batch takes the fallbacks (odd values, several layouts, cut lines); each record
alone mostly takes the fast paths. Both are compared over many generated records.
"""

from __future__ import annotations

import random

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from audit_guard.record import row_getter
from audit_guard.sources.nginx_access import parse_line, parse_lines
from tests.support.otlp_doubles import logs_request

KEYSETS = [
    {"method": "request_method", "path": "request_uri", "status": "status", "time": "msec",
     "user": "user_id", "app": "app_id", "rid": "request_id", "rt": "request_time"},
    {"method": "method", "path": "path", "status": "status_code", "time": "time",
     "user": "http_x_user_id", "app": "upstream_http_x_audit_app_id", "rid": "req_id",
     "rt": "duration"},
]
ODD = ["", "-", None, 0, "abc", 3.5, True, "  ", "\u0007", "x" * 300]


def make_line(rng: random.Random, i: int) -> str:
    ks = rng.choice(KEYSETS)
    # `seq` first: every line (and every cut prefix of it) is distinct, so duplicate detection
    # (stateful by design) plays no part in this comparison.
    rec = {
        "seq": i,
        ks["method"]: rng.choice(["GET", "post", "PUT", "DELETE", "HEAD", "get me"]),
        ks["path"]: rng.choice(["/v1/chat-messages?x=1", "/v1/datasets/d1/documents",
                                "/static/a.js", "v1/nope", "/console/api/apps"]),
        ks["status"]: rng.choice(["200", 200, "403", 502, "000", "", 700, "304"]),
        ks["time"]: rng.choice(["1764165600.123", 1764165600.5, "2026-11-26T14:00:00+00:00",
                                "26/Nov/2026:14:00:00 +0000", "soon", ""]),
        ks["user"]: rng.choice(["u1", "u2", "", "-"]),
        ks["app"]: rng.choice(["a1", "a2", ""]),
        ks["rid"]: rng.choice([f"{i + 1:032x}", f"req-{i}", "", f"{i + 1:032X}"]),
        ks["rt"]: rng.choice(["0.042", 0.5, "", "-1"]),
        "request_completion": rng.choice(["OK", "OK", ""]),
        "body_bytes_sent": rng.choice([100, "100", "30", 0]),
        "sent_http_content_length": rng.choice(["100", "", 100]),
        "upstream_response_length": rng.choice(["100", "50, 100", "200 : 100", ""]),
    }
    if rng.random() < 0.1:
        rec["gzip_ratio"] = "3.0"
    if rng.random() < 0.2:
        rec[rng.choice(list(rec))] = rng.choice(ODD)
    if rng.random() < 0.1:
        rec["http_traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    line = orjson.dumps(rec).decode()
    roll = rng.random()
    if roll < 0.05:
        return line[: rng.randrange(1, len(line))]  # cut
    if roll < 0.07:
        return f"not json at all {i}"
    return line


def corpus(n: int = 3000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [make_line(rng, i) for i in range(n)]


def test_parse_batch_equals_parse_one_by_one() -> None:
    lines = corpus()
    batch = parse_lines(lines)
    assert len({tuple(orjson.loads(x)) for x in lines if x.startswith("{") and x.endswith("}")}) > 1
    for i, line in enumerate(lines):
        assert _diff(batch.row(i), parse_line(line)) == {}, line


def _diff(a, b) -> dict:
    names = [f for f in a.__dataclass_fields__ if f != "fields"]
    return {f: (getattr(a, f), getattr(b, f)) for f in names if getattr(a, f) != getattr(b, f)}


def test_pipeline_batch_equals_one_by_one(pipeline) -> None:
    lines = corpus(1500, seed=11)
    batch_pipeline = Pipeline(load_settings())
    payload, count = batch_pipeline.process_logs(logs_request(*lines), now_ns=99)
    together = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    assert count == len(together) == len(lines)
    for line, span in zip(lines, together, strict=True):
        alone, _ = pipeline.process_logs(logs_request(line), now_ns=99)
        decoded = ExportTraceServiceRequest.FromString(alone)
        (single,) = decoded.resource_spans[0].scope_spans[0].spans
        assert span == single, line


# -- the fast path for the shipped format ----------------------------------------------------
def shipped_line(rng: random.Random, i: int) -> dict:
    """A line with exactly the keys of otel/nginx/audit_log_format.conf, values as nginx
    writes them (numbers bare, the rest strings, "" for an empty variable) plus odd ones."""
    from audit_guard.sources.nginx_access import AUDIT_JSON_KEYS

    rec = {key: rng.choice(["", "-", "x", "a, b : c"]) for key in AUDIT_JSON_KEYS}
    rec.update({
        "msec": rng.choice([1764165600.123, 1764165600.5, "1764165600.250"]),
        "request_time": rng.choice([0.042, 0.0, 1.5, "0.042"]),
        "connection": i, "connection_requests": rng.choice([1, 2]),
        "body_bytes_sent": rng.choice([0, 100, 2048]), "bytes_sent": rng.choice([0, 300]),
        "status": rng.choice(["200", "000", "403", "502", "", 200]),
        "request_method": rng.choice(["GET", "post", ""]),
        "request_uri": rng.choice(["/v1/chat-messages?x=1", "/v1/datasets/d1/documents", ""]),
        "uri": rng.choice(["/v1/chat-messages", "/static/a.js"]),
        "request_id": rng.choice([f"{i + 1:032x}", ""]),
        "request_completion": rng.choice(["OK", ""]),
        "sent_http_content_length": rng.choice(["100", "", "2048"]),
        "upstream_response_length": rng.choice(["100", "50, 100", ""]),
        "user_id": rng.choice(["u1", "", "\u0007"]), "app_id": rng.choice(["a1", ""]),
        "http_traceparent": rng.choice(
            ["", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]),
    })
    if rng.random() < 0.1:
        rec[rng.choice(list(rec))] = rng.choice(ODD)
    keys = list(rec)
    rng.shuffle(keys)  # key order does not matter to either path
    return {k: rec[k] for k in keys}


def test_shipped_format_fast_path_equals_the_general_path() -> None:
    from audit_guard.sources.nginx_access import AuditJsonLine, decode_lines, parse_mappings

    rng = random.Random(11)
    lines = [orjson.dumps(shipped_line(rng, i)) for i in range(2000)]
    fast = parse_lines(lines)
    assert all(isinstance(f, AuditJsonLine) for f in fast.fields)  # it did take the fast path
    objs, cut, malformed = decode_lines(lines)
    assert not cut and not malformed
    general = parse_mappings(objs)
    for i in range(len(lines)):
        a, b = fast.row(i), general.row(i)
        assert a.fields.to_dict() == b.fields
        a.fields = b.fields
        a.raw = b.raw = None
        assert _diff(a, b) == {}, lines[i]


def test_a_line_of_another_format_sends_the_batch_the_general_way() -> None:
    from audit_guard.sources.nginx_access import AuditJsonLine

    rng = random.Random(3)
    shipped = [orjson.dumps(shipped_line(rng, i)) for i in range(10)]
    for odd in (b'{"uri":"/v1/x","status":"200"}', shipped[0][:-9], b"not json"):
        batch = parse_lines([*shipped, odd])
        assert not any(isinstance(f, AuditJsonLine) for f in batch.fields)
        assert batch.path[-1] is not None or odd == b"not json"


def test_row_getter_takes_rows_in_their_order() -> None:
    """record.row_getter: a column's values at the rows given, in that order; the column
    itself only when the caller says the rows are ascending and they are all of them."""
    col = ["a", "b", "c", "d"]
    assert list(row_getter([2, 0])(col)) == ["c", "a"]
    assert list(row_getter([3])(col)) == ["d"]
    assert list(row_getter([3, 1, 2, 0])(col)) == ["d", "b", "c", "a"]  # all rows, not in order
    assert list(row_getter([1, 3], 4)(col)) == ["b", "d"]
    assert row_getter([0, 1, 2, 3], 4)(col) is col
