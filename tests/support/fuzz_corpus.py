"""Real lines of every input format, and structure-aware mutations of them, for fuzzing.

Shared by tests/unit/pipeline/test_fuzz.py (hypothesis drives the random choices, a few hundred
examples)
and scripts/fuzz.py (`make fuzz`: a seeded random.Random, a million lines). A mutation is a
function of the line and a `random.Random`, so both get the same mutations and a failure in
either is replayed from its seed.

Mutations keep one record on one physical line (no CR/LF is ever inserted, and a line never
becomes blank), so "one output record per input line" stays checkable through replay too.
They work on the structure where the format has one: a JSON value (top-level or nested, Docker's
inner `log` line too) or a text token is replaced by a nasty value — huge, negative and
non-finite numbers, years 0001/9999, lone surrogates, NUL, invalid UTF-8, deep nesting,
megabyte strings — and on the bytes: cuts, flips, insertions.
"""

from __future__ import annotations

import io
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from audit_guard.config import Settings
from audit_guard.pipeline import Pipeline
from audit_guard.replay import replay
from audit_guard.sources import container, nginx_error, pgaudit
from audit_guard.telemetry import BatchStats
from audit_guard.wire import read_logs_request
from tests.support.otlp_doubles import logs_request

__all__ = [
    "FORMATS", "SAFETY_NET_FLAGS", "SEEDS", "Format", "FuzzFailure", "mutate", "mutated_lines",
    "run_replay", "run_service", "span_flags",
]


class Format:
    """One input format: where its lines go in the service (`source`, the `audit.source` the
    collector sets) and in replay (`replay_source`, the --source to force), and how a line is
    built: JSON object, container wrapper or text."""

    def __init__(self, name: str, source: str, replay_source: str, kind: str) -> None:
        self.name, self.source, self.replay_source, self.kind = name, source, replay_source, kind


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("nginx_json", "nginx", "nginx", "json"),
    Format("nginx_short", "nginx", "nginx", "json"),
    Format("nginx_error", "nginx_error", "nginx_error", "text"),
    Format("app_dify_json", "app", "app", "json"),
    Format("app_dify_text", "app", "app", "text"),
    Format("app_generic", "app", "app", "json"),
    Format("docker", "app", "docker", "docker"),
    Format("cri", "app", "cri", "text"),
    Format("pgaudit_stderr", "pgaudit", "pgaudit", "text"),
    Format("pgaudit_csvlog", "pgaudit", "pgaudit", "text"),
    Format("pgaudit_jsonlog", "pgaudit", "pgaudit", "json"),
)}

_RID = "4bf92f3577b34da6a3ce929d0e0e4702"
# The shipped otel/nginx/audit_log_format.conf: every key, numbers bare, the rest strings.
_NGINX_SHIPPED = {
    "time_iso8601": "2026-11-26T14:00:00+00:00", "msec": 1764165600.123, "request_id": _RID,
    "connection": 17, "connection_requests": 2, "remote_addr": "10.0.0.7",
    "request_method": "POST", "request_uri": "/v1/chat-messages?conversation=9",
    "uri": "/v1/chat-messages", "server_protocol": "HTTP/1.1", "host": "dify.example",
    "server_name": "dify.example", "status": "200", "request_completion": "OK",
    "body_bytes_sent": 2048, "bytes_sent": 2311, "sent_http_content_length": "2048",
    "sent_http_content_type": "application/json", "upstream_status": "200",
    "upstream_response_length": "2048", "upstream_bytes_received": "2260",
    "upstream_response_time": "0.040", "upstream_addr": "127.0.0.1:5001", "request_time": 0.042,
    "http_user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0", "http_traceparent": "",
    "user_id": "u-42", "app_id": "app-7",
}
_NGINX_SHIPPED_SSE = {**_NGINX_SHIPPED, "request_id": "0af7651916cd43dd8448eb211c80319c",
                      "status": "000", "request_completion": "",
                      "sent_http_content_length": "", "upstream_response_length": "10, 20 : 30",
                      "sent_http_content_type": "text/event-stream", "user_id": ""}
# The seed's short keys (tests/unit/sources/test_nginx_parsing.py).
_NGINX_SHORT = {"time": "2026-11-26T14:00:00Z", "method": "get", "path": "/v1/datasets",
                "status": 403, "ip": "127.0.0.1", "user_id": "u2", "app_id": "a2",
                "request_time": 0.5, "msec": 1764165600.5}
_NGINX_ERROR = [
    '2026/11/26 15:45:40 [error] 29689#29689: *3 upstream prematurely closed connection while '
    'reading upstream, client: 127.0.0.1, server: audit-guard-demo, request: "POST '
    '/v1/chat-messages?cut=1 HTTP/1.1", upstream: "http://127.0.0.1:36025/v1/chat-messages?'
    'cut=1", host: "127.0.0.1:41001"',
    '2026/11/26 15:45:41 [info] 29689#29689: *5 writev() failed (104: Connection reset by '
    'peer) while reading upstream, client: 127.0.0.1, server: audit-guard-demo, request: "GET '
    '/v1/files/9 HTTP/1.1", upstream: "http://127.0.0.1:36025/v1/files/9", host: "h:41001"',
    "2026/11/26 15:45:42 [notice] 29688#29688: start worker process 29690",
]
_DIFY_JSON = [
    {"ts": "2025-11-26T14:00:00.123Z", "severity": "INFO", "service": "api",
     "caller": "ext_request_logging.py:73",
     "message": f"POST /v1/chat-messages 200 812.347 {_RID}", "trace_id": _RID,
     "span_id": "00f067aa0ba902b7",
     "identity": {"tenant_id": "t-1", "user_id": "eu-7", "user_type": "end_user"},
     "attributes": {"app_id": "app-7"}},
    {"ts": "2025-11-26T14:00:01.5Z", "severity": "ERROR", "service": "api",
     "caller": "app.py:120", "message": "something failed", "stack_trace": "Traceback ..."},
]
_DIFY_TEXT = [
    f"2025-11-26 14:00:00.123 INFO [Dummy-1] [ext_request_logging.py:73] {_RID} - "
    f"POST /v1/chat-messages 200 12.5 {_RID}",
    "2025-11-26 14:00:00,123.123 WARNING [MainThread] [app.py:9]  - plain message",
]
_GENERIC = [
    {"timestamp": "2025-11-26T14:00:00.123Z", "method": "DELETE",
     "path": "/v1/datasets/ds-1", "status": 204, "user_id": "u-1", "app_id": "a-1",
     "request_id": _RID, "duration_ms": 12.5, "client_ip": "10.0.0.9"},
    {"time": 1764165600.25, "userId": "u-2", "appId": "a-2", "url": "https://x/api/y?z=1",
     "status_code": "201", "traceparent": f"00-{_RID}-00f067aa0ba902b7-01"},
]
_DOCKER_TIME = "2026-11-26T14:00:00.123456789Z"
_CRI_TIME = "2026-11-26T14:00:00.123456789+00:00"
_PG_PREFIX = "2025-11-26 15:00:00.000 UTC [9] alice@shop LOG:  "
_PG_AUDIT = [
    'AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.items,"SELECT id, name FROM items '
    "/*traceparent='00-" + _RID + "-00f067aa0ba902b7-01'*/\",<none>",
    "AUDIT: OBJECT,4,2,WRITE,INSERT,TABLE,public.orders,INSERT INTO orders VALUES ($1),42",
    "AUDIT: SESSION,7,1,DDL,CREATE TABLE,TABLE,public.t,CREATE TABLE t (a int),<not logged>",
]


def _csv(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _seeds() -> dict[str, list[bytes]]:
    seeds: dict[str, list[bytes]] = {
        "nginx_json": [orjson.dumps(_NGINX_SHIPPED), orjson.dumps(_NGINX_SHIPPED_SSE)],
        "nginx_short": [orjson.dumps(_NGINX_SHORT)],
        "nginx_error": [line.encode() for line in _NGINX_ERROR],
        "app_dify_json": [orjson.dumps(obj) for obj in _DIFY_JSON],
        "app_dify_text": [line.encode() for line in _DIFY_TEXT],
        "app_generic": [orjson.dumps(obj) for obj in _GENERIC],
        "pgaudit_stderr": [(_PG_PREFIX + a).encode() for a in _PG_AUDIT],
        "pgaudit_csvlog": [
            (f'2025-11-26 15:00:00.{i:03d} UTC,"alice","shop",12345,"127.0.0.1:54321",'
             f'6565d0a0.3039,{i + 1},"SELECT",2025-11-26 15:00:00 UTC,3/13,0,LOG,00000,'
             f'{_csv(a)},,,,,,,,,"psql","client backend",,0').encode()
            for i, a in enumerate(_PG_AUDIT)],
        "pgaudit_jsonlog": [orjson.dumps({
            "timestamp": f"2025-11-26 15:00:00.{i:03d} UTC", "user": "alice", "dbname": "shop",
            "pid": 12345, "remote_host": "127.0.0.1", "remote_port": 54321,
            "session_id": "6565d0a0.3039", "line_num": i + 1, "ps": "SELECT",
            "session_start": "2025-11-26 15:00:00 UTC", "vxid": "3/13", "txid": 0,
            "error_severity": "LOG", "message": a, "application_name": "psql",
            "backend_type": "client backend", "query_id": 0}) for i, a in enumerate(_PG_AUDIT)],
    }
    inner = seeds["app_dify_json"] + seeds["app_dify_text"] + seeds["app_generic"]
    seeds["docker"] = [orjson.dumps({"log": line.decode() + "\n", "stream": "stdout",
                                     "time": _DOCKER_TIME}) for line in inner]
    seeds["cri"] = [f"{_CRI_TIME} stdout F ".encode() + line for line in inner]
    return seeds


SEEDS = _seeds()

# -- nasty values ------------------------------------------------------------------------------

_BIG = [b"9223372036854775807", b"9223372036854775808", b"18446744073709551615",
        b"18446744073709551616", b"1" + b"0" * 40, b"-" + b"9" * 30, b"-9223372036854775809"]
_NUMBERS = [b"-1", b"0", b"-0", b"000", b"009", b"70000", b"65536", b"1e308", b"-1e308",
            b"1e400", b"-1e400", b"1.5e-400", b"0.0000001", b"-1764165600.123", b"253402300800",
            b"99999999999.999", *_BIG]
_NON_JSON_NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"0x10", b"1_000", b"+5", b".5"]
_TIMES = [b"0001-01-01T00:00:00Z", b"9999-12-31T23:59:59.999999999Z", b"1969-12-31T23:59:59Z",
          b"2262-04-11T23:47:16.854775808Z", b"2262-04-12T00:00:00+00:00",
          b"0000-00-00T00:00:00Z", b"2026-02-30T25:61:61Z", b"26/Nov/0001:00:00:00 +0000",
          b"31/Dec/9999:23:59:59 -2359", b"2026-11-26T14:00:00+99:99"]
_STRINGS = [b"\\ud800", b"\\udfff\\ud800", b"\\udbff", b"\\u0000", b"a\\u0000b", b"\\\\",
            b"\\\"", b"-", b"", b" ", b"\\t", b"\\u001b[31m", b"\\u2028", b"\xe2\x80\xae",
            b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x00", b"\xe9",
            b"%00%ff", "ü/日本/🎉".encode(), b"../../etc/passwd",
            b"00-" + b"f" * 32 + b"-" + b"0" * 16 + b"-01", b"0" * 32, b"g" * 32, b"x" * 300]
_STRUCTURES = [b"{}", b"[]", b"null", b"true", b"false", b'{"a":{"b":[1,2,{"c":null}]}}',
               b"[1,2,3]", b'{"user_id":{"id":1}}']


def _deep(rnd: random.Random) -> bytes:
    depth = rnd.choice((64, 1000, 1025, 5000, 20000))
    return rnd.choice((b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth,
                       b"[" * depth))  # the last one never closes


def _megabytes(rnd: random.Random, allow_huge: bool) -> bytes:
    size = rnd.choice((70_000, 300_000, 1_100_000) if allow_huge else (9_000, 20_000))
    return rnd.choice((b"A", "é".encode(), "🎉".encode(), b"/")) * (size // 2)


def nasty_json(rnd: random.Random, allow_huge: bool) -> bytes:
    """A JSON value token (maybe not valid JSON) to put where a value was."""
    roll = rnd.random()
    if roll < 0.35:
        token = rnd.choice(_NUMBERS)
        return b'"' + token + b'"' if rnd.random() < 0.4 else token
    if roll < 0.45:
        return rnd.choice(_NON_JSON_NUMBERS)
    if roll < 0.6:
        return b'"' + rnd.choice(_TIMES) + b'"'
    if roll < 0.85:
        return b'"' + rnd.choice(_STRINGS) + b'"'
    if roll < 0.95:
        return rnd.choice(_STRUCTURES)
    if roll < 0.98:
        return _deep(rnd)
    return b'"' + _megabytes(rnd, allow_huge) + b'"'


def nasty_text(rnd: random.Random, allow_huge: bool) -> bytes:
    """A bare token to put where a word of a text line was."""
    roll = rnd.random()
    if roll < 0.4:
        return rnd.choice(_NUMBERS + _NON_JSON_NUMBERS)
    if roll < 0.6:
        return rnd.choice(_TIMES).replace(b"T", b" ")
    if roll < 0.9:
        return rnd.choice(_STRINGS).replace(b"\\", b"")
    if roll < 0.97:
        return rnd.choice((b'"', b"'", b",", b'""', b"[", b"(", b"*", b":", b"\t", b"AUDIT: "))
    return _megabytes(rnd, allow_huge)


# -- mutations -----------------------------------------------------------------------------------

_HOLE = "\x00audit-guard-fuzz-hole\x00"
_HOLE_JSON = orjson.dumps(_HOLE)


def _paths(obj: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a decoded JSON object (nested objects too, 8 levels deep)."""
    out: list[tuple[str, ...]] = []
    if isinstance(obj, dict) and len(prefix) < 8:
        for key, value in obj.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


def _json_value(line: bytes, rnd: random.Random, allow_huge: bool) -> bytes:
    """Replace (or drop, or add) one value of a JSON line, top level or nested."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _bytes(line, rnd, allow_huge)
    paths = _paths(obj)
    if not isinstance(obj, dict) or not paths:
        return _bytes(line, rnd, allow_huge)
    path = rnd.choice(paths)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    roll = rnd.random()
    if roll < 0.1:
        del parent[path[-1]]
        hole = b""
    elif roll < 0.15:
        parent[rnd.choice(("extra", "msec", "status", "user_id", "ts", "log"))] = _HOLE
        hole = nasty_json(rnd, allow_huge)
    else:
        parent[path[-1]] = _HOLE
        hole = nasty_json(rnd, allow_huge)
    try:
        encoded = orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError):  # nested deeper than orjson writes
        return _bytes(line, rnd, allow_huge)
    return encoded.replace(_HOLE_JSON, hole, 1) if hole else encoded


def _docker(line: bytes, rnd: random.Random, allow_huge: bool) -> bytes:
    """Mutate the inner app line (its structure), or the wrapper."""
    try:
        obj = orjson.loads(line)
        inner = obj["log"].rstrip("\n").encode()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return _bytes(line, rnd, allow_huge)
    if rnd.random() < 0.6:
        kind = "json" if inner.startswith(b"{") else "text"
        mutated = _structural(kind, inner, rnd, allow_huge)
        ending = "\n" if rnd.random() < 0.9 else ""  # a piece without "\n" is partial
        obj["log"] = mutated.decode("utf-8", "replace") + ending
        try:
            return orjson.dumps(obj)
        except (orjson.JSONEncodeError, TypeError):  # nested deeper than orjson writes
            return _bytes(line, rnd, allow_huge)
    return _json_value(line, rnd, allow_huge)


_TOKEN = re.compile(rb"[^ ,\[\]\"()#*:]+")


def _text_token(line: bytes, rnd: random.Random, allow_huge: bool) -> bytes:
    """Replace one word of a text line (a date part, a number, a name) with a nasty token."""
    spans = [m.span() for m in _TOKEN.finditer(line)]
    if not spans:
        return _bytes(line, rnd, allow_huge)
    start, end = rnd.choice(spans)
    return line[:start] + nasty_text(rnd, allow_huge) + line[end:]


def _bytes(line: bytes, rnd: random.Random, allow_huge: bool) -> bytes:
    """Byte-level damage: a cut, a flipped byte, an inserted or duplicated run."""
    roll = rnd.random()
    n = len(line)
    if roll < 0.35 and n > 1:
        return line[: rnd.randrange(1, n)]  # cut (a write that stopped, a size cap)
    if roll < 0.6 and n:
        i = rnd.randrange(n)
        return line[:i] + bytes((line[i] ^ (1 << rnd.randrange(8)),)) + line[i + 1:]
    if roll < 0.85:
        i = rnd.randrange(n + 1)
        return line[:i] + rnd.choice(_STRINGS + [b"\x00", b"\xff", b"{", b"}", b'"']) + line[i:]
    if roll < 0.95 and n:
        i, j = sorted((rnd.randrange(n), rnd.randrange(n)))
        return line[:j] + line[i:j] + line[j:]
    return line + b" " + _megabytes(rnd, allow_huge)


def _structural(kind: str, line: bytes, rnd: random.Random, allow_huge: bool) -> bytes:
    if kind == "json":
        return _json_value(line, rnd, allow_huge)
    if kind == "docker":
        return _docker(line, rnd, allow_huge)
    return _text_token(line, rnd, allow_huge)


def mutate(fmt: str, line: bytes, rnd: random.Random, allow_huge: bool = True) -> bytes:
    """1–3 mutations of `line` (structural mostly, byte-level sometimes); one physical line,
    never blank. `allow_huge`: megabyte values may appear (else at most tens of KB)."""
    kind = FORMATS[fmt].kind
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        step: Callable[..., bytes] = (_bytes if rnd.random() < 0.25
                                      else lambda *a: _structural(kind, *a))
        line = step(line, rnd, allow_huge)
    line = line.replace(b"\r", b" ").replace(b"\n", b" ")
    return line if line.strip() else b"x"


def mutated_lines(fmt: str, count: int, rnd: random.Random, clean_share: float = 0.2,
                  allow_huge: bool = True) -> list[bytes]:
    """`count` lines of format `fmt`: seeds, mostly mutated (`clean_share` left whole)."""
    seeds = SEEDS[fmt]
    out = []
    for _ in range(count):
        # A request id of its own (as nginx makes one per request), so that only a repeated
        # line is a duplicate.
        line = rnd.choice(seeds).replace(_RID_BYTES, b"%032x" % rnd.getrandbits(128))
        out.append(line if rnd.random() < clean_share else mutate(fmt, line, rnd, allow_huge))
    return out


_RID_BYTES = _RID.encode()


# -- running lines through the service's pipeline and through replay -----------------------------

# Flags the pipeline's last-resort safety net would set (the net must never be needed).
SAFETY_NET_FLAGS = ("invalid_field:record", "internal_error", "unprocessable")


class FuzzFailure(AssertionError):
    """An invariant broke; the message says which and for which format."""


def expected_records(fmt: str, lines: list[bytes] | list[str]) -> int | tuple[int, int]:
    """How many records (spans, replay objects) these lines must make: one per line, except
    where the format's own framing says otherwise — container pieces recombine into lines,
    PostgreSQL log entries without an AUDIT message are no audit record, and nginx error-log
    lines are events (a record only when they show a cut and join no access record)."""
    numbered = list(enumerate(lines, 1))
    source = FORMATS[fmt]
    if source.source == "pgaudit":
        return len(pgaudit.parse(numbered))
    if source.source == "nginx_error":
        # The same line twice (a resent request) may be kept once: at least one per distinct
        # line, at most one per line.
        events = [e for e in nginx_error.parse_lines(numbered)
                  if e.kind and nginx_error.FLAG_FOR_KIND.get(e.kind)]
        return (len({(e.time_unix_nano, e.pid, e.tid, e.connection, e.message, e.request_uri)
                     for e in events}), len(events))
    return len(lines)


def expected_replay_records(fmt: str, lines: list[bytes]) -> int | tuple[int, int]:
    """As expected_records, for replay: container pieces recombine first, and every error-log
    line that shows a cut is reported (replay reads files, nothing is resent)."""
    numbered = list(enumerate(lines, 1))
    if fmt == "docker":
        return len(container.recombine_docker(numbered))
    if fmt == "cri":
        return len(container.recombine_cri(numbered))
    if fmt == "nginx_error":
        return sum(1 for e in nginx_error.parse_lines(numbered)
                   if e.kind and nginx_error.FLAG_FOR_KIND.get(e.kind))
    return expected_records(fmt, lines)


def _count_ok(count: int, expected: int | tuple[int, int]) -> bool:
    if isinstance(expected, tuple):
        return expected[0] <= count <= expected[1]
    return count == expected


def span_flags(span: Span) -> list[str]:
    for kv in span.attributes:
        if kv.key == "audit.flags":
            return [v.string_value for v in kv.value.array_value.values]
    return []


def check_spans(fmt: str, payload: bytes, expected: int | tuple[int, int] | None,
                max_span_bytes: int) -> list[Span]:
    """Decode a span request and check every span: ids of the right size, times ordered, no
    safety-net flag, none larger than `max_span_bytes`. Returns the spans."""

    request = ExportTraceServiceRequest.FromString(payload)
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    if expected is not None and not _count_ok(len(spans), expected):
        raise FuzzFailure(f"{fmt}: {len(spans)} spans for {expected} records")
    for span in spans:
        if len(span.trace_id) != 16 or len(span.span_id) != 8:
            raise FuzzFailure(f"{fmt}: bad ids {span.trace_id.hex()} {span.span_id.hex()}")
        if span.start_time_unix_nano > span.end_time_unix_nano:
            raise FuzzFailure(f"{fmt}: span starts after it ends")
        if span.ByteSize() > max_span_bytes:
            raise FuzzFailure(f"{fmt}: a {span.ByteSize()}-byte span (cap not applied)")
        bad = [f for f in span_flags(span) if f in SAFETY_NET_FLAGS]
        if bad:
            raise FuzzFailure(f"{fmt}: the pipeline's safety net was needed: {bad}")
    return spans


def logs_request_for(fmt: str, lines: list[bytes], bytes_bodies: frozenset[int] = frozenset()
                     ) -> ExportLogsServiceRequest:
    """A logs request as the collector sends it: string bodies (the collector decodes UTF-8,
    replacing invalid bytes), or for the rows in `bytes_bodies` the raw bytes."""

    request = logs_request(*(line.decode("utf-8", "replace") for line in lines),
                           source=FORMATS[fmt].source)
    if bytes_bodies:
        records = request.resource_logs[0].scope_logs[0].log_records
        for i in bytes_bodies:
            records[i].body.bytes_value = lines[i]
    return request


class _ErrorLog(logging.Handler):
    """Catches error logs while the pipeline runs: the safety net logs the chunk it caught."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _ErrorLog:
        logger = logging.getLogger("audit_guard")
        self._level = logger.level
        if logger.getEffectiveLevel() > logging.ERROR:  # e.g. make fuzz silences logging
            logger.setLevel(logging.ERROR)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("audit_guard")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def run_service(pipeline: Pipeline, fmt: str, lines: list[bytes], now_ns: int, *,
                bytes_bodies: frozenset[int] = frozenset(), stats: BatchStats | None = None
                ) -> list[Span]:
    """`lines` through Pipeline.process_logs, as one collector request read as the gRPC server
    reads it (audit_guard.wire: from its bytes). Error-log events wait for their access record:
    a second, empty request after the join window flushes them."""

    request = read_logs_request(logs_request_for(fmt, lines, bytes_bodies).SerializeToString())
    with _ErrorLog() as errors:
        payload, count = pipeline.process_logs(request, now_ns, stats or BatchStats())
    if errors.messages:
        raise FuzzFailure(f"{fmt}: the pipeline logged an error: {errors.messages[0][:300]}")
    if count != len(lines):
        raise FuzzFailure(f"{fmt}: process_logs counted {count} of {len(lines)} records")
    max_span = 64 * pipeline.span_builder.max_attribute_bytes
    texts = [line.decode("utf-8", "replace") for line in lines]
    if FORMATS[fmt].source == "nginx_error":
        check_spans(fmt, payload, 0, max_span)
        later = now_ns + 10**12  # past any join window
        payload, _ = pipeline.process_logs(logs_request(), later, stats or BatchStats())
    return check_spans(fmt, payload, expected_records(fmt, texts), max_span)


def run_replay(fmt: str, lines: list[bytes], path: Path, settings: Settings
               ) -> list[dict[str, Any]]:
    """`lines` as a log file through `audit-guard replay` (in process): exit 0 or 1, one JSON
    object per record, nothing but the summary on stderr."""

    path.write_bytes(b"\n".join(lines) + b"\n")
    out, err = io.BytesIO(), io.StringIO()
    code = replay([path], source=FORMATS[fmt].replay_source, settings=settings, out=out,
                  err=err)
    if code not in (0, 1):
        raise FuzzFailure(f"{fmt}: replay exited {code}: {err.getvalue()[-2000:]}")
    if "Traceback" in err.getvalue():
        raise FuzzFailure(f"{fmt}: replay printed a traceback")
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    expected = expected_replay_records(fmt, lines)
    if not _count_ok(len(records), expected):
        raise FuzzFailure(f"{fmt}: replay wrote {len(records)} records for {expected}")
    for rec in records:
        bad = [f for f in rec["flags"] if f in SAFETY_NET_FLAGS]
        if bad:
            raise FuzzFailure(f"{fmt}: replay record with a safety-net flag {bad}")
    return records
