"""audit_guard.sources.nginx_error: handwritten lines in nginx's exact format, then real nginx.

The real-nginx part provokes the failures the error log exists for (a cut SSE stream, a cut
fixed-length body, a client abort) plus one normal request, and checks that each event joins the
access-log line of its request via join_key — the join the processor relies on to see a cut
stream at all.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_guard import flags
from audit_guard.sources.nginx_error import (
    FLAG_FOR_KIND,
    KINDS,
    LEVELS,
    MAX_LINE_BYTES,
    ErrorEvent,
    classify,
    detect_format,
    join_key,
    parse_line,
    parse_lines,
)
from demo.procs import wait_until
from tests.support.nginx_upstream import NginxUpstream, nginx_with_upstream, wait_for_lines

T0 = "2026/11/26 15:45:40"
T0_NS = int(datetime(2026, 11, 26, 15, 45, 40, tzinfo=UTC).timestamp()) * 1_000_000_000

UPSTREAM_CUT = (
    f"{T0} [error] 29689#29689: *3 upstream prematurely closed connection while reading "
    'upstream, client: 127.0.0.1, server: audit-guard-demo, request: "POST '
    '/v1/chat-messages?cut=1 HTTP/1.1", upstream: "http://127.0.0.1:36025/v1/chat-messages?'
    'cut=1", host: "127.0.0.1:41001"'
)


def one(raw: bytes | str, line: int = 1, **kw: Any) -> ErrorEvent:
    event = parse_line(line, raw, **kw)
    assert event is not None, raw
    return event


# -- handwritten lines ------------------------------------------------------------------------


def test_full_line_with_connection_and_context() -> None:
    e = one(UPSTREAM_CUT + "\n", line=9)
    assert e.line == 9
    assert e.time_unix_nano == T0_NS
    assert (e.level, e.pid, e.tid, e.connection) == ("error", 29689, 29689, 3)
    assert e.message == "upstream prematurely closed connection while reading upstream"
    assert (e.client, e.server, e.host) == ("127.0.0.1", "audit-guard-demo", "127.0.0.1:41001")
    assert e.upstream == "http://127.0.0.1:36025/v1/chat-messages?cut=1"
    assert e.referrer is None
    assert (e.request_method, e.request_uri, e.request_protocol) == (
        "POST",
        "/v1/chat-messages?cut=1",
        "HTTP/1.1",
    )
    assert (e.cut, e.kind) == (False, "upstream_closed")
    assert join_key(e) == (3, "POST", "/v1/chat-messages?cut=1")
    # bytes and str give the same event
    assert one(UPSTREAM_CUT.encode(), line=9) == e


def test_process_line_without_connection_or_context() -> None:
    e = one(f"{T0} [notice] 29688#29688: start worker process 29689")
    assert (e.level, e.pid, e.tid, e.connection) == ("notice", 29688, 29688, None)
    assert e.message == "start worker process 29689"
    assert (e.client, e.server, e.request_method, e.kind, e.cut) == (None, None, None, None, False)
    assert join_key(e) is None


def test_idle_keepalive_close_is_not_an_abort() -> None:
    # No request yet: nginx prints the listen address as the server and no request line.
    e = one(
        f"{T0} [info] 29689#29689: *1 client closed connection while waiting for request, "
        "client: 127.0.0.1, server: 127.0.0.1:41001"
    )
    assert (e.connection, e.client, e.server) == (1, "127.0.0.1", "127.0.0.1:41001")
    assert e.message == "client closed connection while waiting for request"
    assert e.kind is None
    assert join_key(e) is None


def test_request_with_spaces_quotes_and_all_context_keys() -> None:
    # nginx escapes nothing in the context: the request line may hold `"` and `, `, and a URI
    # with a raw space is accepted (space_in_uri).
    raw = (
        f"{T0} [warn] 7#8: *42 an upstream response is buffered to a temporary file "
        "/tmp/proxy/1/00/0000000001 while reading upstream, client: ::1, server: , "
        'request: "GET /a "b", client: x/c d?q=1, 2 HTTP/1.0", subrequest: "/sub", '
        'upstream: "http://[::1]:8080/a", host: "h", referrer: "http://r/?a=\\"b\\""'
    )
    e = one(raw)
    assert (e.pid, e.tid, e.connection, e.level) == (7, 8, 42, "warn")
    assert e.message.startswith("an upstream response is buffered to a temporary file /tmp/")
    assert e.message.endswith(" while reading upstream")
    assert (e.client, e.server, e.host) == ("::1", None, "h")
    assert e.upstream == "http://[::1]:8080/a"
    assert e.referrer == 'http://r/?a=\\"b\\"'
    assert (e.request_method, e.request_uri, e.request_protocol) == (
        "GET",
        '/a "b", client: x/c d?q=1, 2',
        "HTTP/1.0",
    )
    assert (e.kind, e.cut) == ("buffered_to_temp_file", False)
    assert join_key(e) == (42, "GET", '/a "b", client: x/c d?q=1, 2')


def test_message_that_itself_contains_client_key() -> None:
    # The path in an open() message is the decoded URI: it can contain `, client: `.
    raw = (
        f'{T0} [error] 5#5: *6 open() "/srv/a, client: 1.2.3.4" failed (2: No such file or '
        'directory), client: 10.0.0.1, server: s, request: "GET /a HTTP/1.1", host: "h"'
    )
    e = one(raw)
    assert e.message == ('open() "/srv/a, client: 1.2.3.4" failed (2: No such file or directory)')
    assert (e.client, e.server, e.request_uri, e.host) == ("10.0.0.1", "s", "/a", "h")


def test_capped_line_is_cut() -> None:
    head = (
        f"{T0} [error] 29689#29689: *9 upstream prematurely closed connection while sending "
        'to client, client: 127.0.0.1, server: audit-guard-demo, request: "GET /v1/datasets?x='
    )
    # What nginx writes: 2047 bytes of text and the newline, 2048 in all.
    text = head + "x" * (MAX_LINE_BYTES - 1 - len(head))
    for raw in (text + "\n", text, text.encode() + b"\n"):
        e = one(raw)
        assert e.cut
        assert e.kind == "upstream_closed"
        assert e.message == "upstream prematurely closed connection while sending to client"
        assert (e.client, e.server, e.request_method) == ("127.0.0.1", "audit-guard-demo", "GET")
        assert e.request_uri is not None and e.request_uri.startswith("/v1/datasets?x=xx")
        assert e.request_protocol is None
        # A prefix of the URI matches no access line: no key rather than a wrong one.
        assert join_key(e) is None
    # One byte below the cap, with its closing quote, is a whole line.
    shorter = one(text[:-2] + '"')
    assert shorter.cut is False


def test_capped_line_ending_inside_a_key_or_message() -> None:
    base = UPSTREAM_CUT.replace('"127.0.0.1:41001"', '"h"')
    pad = "y" * (MAX_LINE_BYTES - 1 - len(base))
    # The request is long but whole; the cap fell inside the `, host` key.
    padded = base.replace("cut=1 HTTP", f"cut=1{pad} HTTP", 1)
    text = padded[: padded.index(', host: "h"') + len(", hos")]
    text += "z" * (MAX_LINE_BYTES - 1 - len(text))
    text = text[: MAX_LINE_BYTES - 1]
    assert len(text.encode()) == MAX_LINE_BYTES - 1
    e = one(text)
    assert e.cut and e.kind == "upstream_closed" and e.client == "127.0.0.1"
    # Cap inside the message itself: no context to find, the message prefix is kept.
    long_msg = f"{T0} [error] 1#1: *2 upstream sent too big header " + "m" * 3000
    e = one(long_msg.encode()[: MAX_LINE_BYTES - 1])
    assert e.cut and e.kind == "header_too_big" and e.client is None


def test_missing_closing_quote_is_cut_even_below_the_cap() -> None:
    e = one(UPSTREAM_CUT[:-1])  # whatever shipped it lost the last byte
    assert e.cut
    assert e.host == "127.0.0.1:41001"
    assert join_key(e) == (3, "POST", "/v1/chat-messages?cut=1")  # request line is whole
    e = one(UPSTREAM_CUT[: UPSTREAM_CUT.index(" HTTP/1.1")])
    assert e.cut and e.request_protocol is None and join_key(e) is None


@pytest.mark.parametrize("level", LEVELS)
def test_levels(level: str) -> None:
    assert one(f"{T0} [{level}] 1#1: x").level == level


def test_not_nginx_lines_are_skipped_and_line_numbers_kept() -> None:
    lines: list[tuple[int, bytes | str]] = [
        (1, b""),
        (2, b'{"msec":1.0}'),
        (3, f"{T0} [bogus] 1#1: x"),
        (4, "2026/13/45 99:99:99 [error] 1#1: not a date"),
        (5, UPSTREAM_CUT.encode()),
        (6, 'nginx: [emerg] unknown directive "foo" in /etc/nginx/nginx.conf:3'),
    ]
    events = parse_lines(lines)
    assert [e.line for e in events] == [5, 6]
    console = events[1]
    assert (console.level, console.time_unix_nano, console.pid) == ("emerg", None, None)
    assert console.message == 'unknown directive "foo" in /etc/nginx/nginx.conf:3'


def test_time_zone() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert one(UPSTREAM_CUT, tz=plus2).time_unix_nano == T0_NS - 2 * 3600 * 1_000_000_000
    assert one(UPSTREAM_CUT, tz=UTC).time_unix_nano == T0_NS


def test_invalid_utf8_is_replaced_not_rejected() -> None:
    raw = UPSTREAM_CUT.encode().replace(b"cut=1 HTTP", b"cut=\xff HTTP")
    e = one(raw)
    assert e.request_uri == "/v1/chat-messages?cut=\ufffd"
    assert not e.cut


# Each message as nginx 1.22 writes it (the text of ngx_log_error / ngx_connection_error, the
# errno as ngx_log_errno prints it, then ` while <c->log->action>`), with the kind it gets and
# the flag that kind puts on the request's access record. Sources: ngx_http_upstream.c
# (process_non_buffered_*, process_upstream/downstream, process_request, upstream_next,
# check_broken_connection), ngx_event_pipe.c / ngx_readv_chain.c (readv), ngx_recv.c (recv),
# ngx_event_openssl.c (SSL_read/SSL_write), ngx_http_request.c (client side).
UPSTREAM = "truncated:upstream_closed"
CLIENT = "truncated:request_incomplete"
MESSAGES: list[tuple[str, str | None, str | None]] = [
    # -- the upstream closed, reset or stalled after the header: the body was cut --
    ("upstream prematurely closed connection while reading upstream", "upstream_closed",
     UPSTREAM),
    ("upstream prematurely closed connection while sending to client", "upstream_closed",
     UPSTREAM),
    ("recv() failed (104: Connection reset by peer) while reading upstream", "upstream_reset",
     UPSTREAM),
    ("readv() failed (104: Connection reset by peer) while reading upstream", "upstream_reset",
     UPSTREAM),
    # the client write handler reads the upstream too (non-buffered and event pipe alike)
    ("recv() failed (104: Connection reset by peer) while sending to client", "upstream_reset",
     UPSTREAM),
    ("readv() failed (104: Connection reset by peer) while sending to client", "upstream_reset",
     UPSTREAM),
    ("SSL_read() failed (SSL: error:0A000126:SSL routines::unexpected eof while reading) while "
     "reading upstream", "upstream_reset", UPSTREAM),
    ("SSL_read() failed (104: Connection reset by peer) while reading upstream",
     "upstream_reset", UPSTREAM),
    ("upstream timed out (110: Connection timed out) while reading upstream",
     "upstream_timeout", UPSTREAM),
    # -- the client went away or stopped reading --
    ("client prematurely closed connection while reading upstream", "client_closed", CLIENT),
    ("client prematurely closed connection, so upstream connection is closed too while "
     "sending request to upstream", "client_closed", CLIENT),
    ("epoll_wait() reported that client prematurely closed connection, so upstream "
     "connection is closed too (104: Connection reset by peer) while reading upstream",
     "client_closed", CLIENT),
    ("client prematurely closed connection while reading client request body",
     "client_closed", CLIENT),
    ("writev() failed (104: Connection reset by peer) while sending to client",
     "client_closed", CLIENT),
    ("writev() failed (32: Broken pipe) while sending to client", "client_closed", CLIENT),
    # proxy_buffering off: the client write runs inside the upstream read handler.
    ("writev() failed (104: Connection reset by peer) while reading upstream", "client_closed",
     CLIENT),
    ("send() failed (104: Connection reset by peer) while sending response to client",
     "client_closed", CLIENT),
    ("sendfile() failed (32: Broken pipe) while sending response to client", "client_closed",
     CLIENT),
    ("SSL_write() failed (32: Broken pipe) while sending to client", "client_closed", CLIENT),
    ("SSL_write() failed (SSL: error:0A00007F:SSL routines::bad write retry) while reading "
     "upstream", "client_closed", CLIENT),
    ("client timed out (110: Connection timed out) while sending to client",
     "client_timeout", CLIENT),
    ("client timed out (110: Connection timed out) while sending response to client",
     "client_timeout", CLIENT),
    # -- before the header: nginx answers 502/504 itself, the access log shows it --
    ("upstream timed out (110: Connection timed out) while reading response header from "
     "upstream", "upstream_before_header", None),
    ("upstream timed out (110: Connection timed out) while connecting to upstream",
     "upstream_before_header", None),
    ("upstream prematurely closed connection while reading response header from upstream",
     "upstream_before_header", None),
    ("recv() failed (104: Connection reset by peer) while reading response header from "
     "upstream", "upstream_before_header", None),
    ("connect() failed (111: Connection refused) while connecting to upstream",
     "upstream_before_header", None),
    ("writev() failed (104: Connection reset by peer) while sending request to upstream",
     "upstream_before_header", None),
    ("upstream sent too big header while reading response header from upstream",
     "header_too_big", None),
    ("an upstream response is buffered to a temporary file /var/lib/nginx/proxy/1/00/01 "
     "while reading upstream", "buffered_to_temp_file", None),
    # -- no request, or nothing wrong --
    ("client closed connection while waiting for request", None, None),
    ("client closed connection while SSL handshaking", None, None),
    ("client 127.0.0.1 closed keepalive connection", None, None),
    ("client timed out (110: Connection timed out) while reading client request headers", None,
     None),
    ("recv() failed (104: Connection reset by peer) while waiting for request", None, None),
    ("upstream timed out (110: Connection timed out) while proxying upgraded connection", None,
     None),
    ('open() "/x" failed (2: No such file or directory)', None, None),
]


@pytest.mark.parametrize(("message", "kind", "flag"), MESSAGES)
def test_classify(message: str, kind: str | None, flag: str | None) -> None:
    assert classify(message) == kind
    # the whole line, as nginx 1.22 writes it with the http context after the message
    line = (f"{T0} [error] 811#811: *5 {message}, client: 10.0.0.1, server: dify.local, "
            'request: "POST /v1/chat-messages HTTP/1.1", upstream: '
            '"http://127.0.0.1:5001/v1/chat-messages", host: "dify.local"')
    event = one(line)
    assert (event.message, event.kind, event.request_uri) == (message, kind, "/v1/chat-messages")
    assert (FLAG_FOR_KIND[kind] if kind is not None else None) == flag


def test_flag_for_kind() -> None:
    assert set(FLAG_FOR_KIND) == set(KINDS)
    assert FLAG_FOR_KIND == {
        "upstream_closed": "truncated:upstream_closed",
        "upstream_reset": "truncated:upstream_closed",
        "upstream_timeout": "truncated:upstream_closed",
        "upstream_before_header": None,
        "client_closed": "truncated:request_incomplete",
        "client_timeout": "truncated:request_incomplete",
        "header_too_big": None,
        "buffered_to_temp_file": None,
    }
    for flag in filter(None, FLAG_FOR_KIND.values()):
        assert flag.removeprefix("truncated:") in flags.TRUNCATION_REASONS
    # every kind is met by some message of the table above
    assert {kind for _, kind, _ in MESSAGES} - {None} == set(KINDS)


def test_detect_format() -> None:
    error_log = [
        f'{T0} [notice] 1#1: using the "epoll" event method'.encode(),
        UPSTREAM_CUT.encode(),
        b"",
    ]
    assert detect_format(error_log)
    assert detect_format([*error_log * 4, b"some wrapper script output"])
    assert not detect_format([b'{"msec":1.0,"status":"200"}'] * 3)
    assert not detect_format([b'127.0.0.1 - - [26/Nov/2026:15:45:40 +0000] "GET / HTTP/1.1" 200'])
    assert not detect_format([])
    assert not detect_format([b"", b"  "])


# -- real nginx 1.22 --------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[NginxUpstream]:
    with nginx_with_upstream(tmp_path) as s:
        yield s


def error_events(path: Path) -> list[ErrorEvent]:
    if not path.exists():
        return []
    # keepends: a line nginx is still writing has no newline yet and is left for the next read.
    lines = [ln for ln in path.read_bytes().splitlines(keepends=True) if ln.endswith(b"\n")]
    return parse_lines(enumerate(lines, 1))


def access_key(line: dict[str, Any]) -> tuple[int, str, str]:
    return int(line["connection"]), line["request_method"], line["request_uri"]


def abort_download(port: int, path: str) -> int:
    """GET `path` on a raw socket, read a few KB of the body, then reset the connection (an
    SO_LINGER 0 close sends RST, as a killed browser tab or a timed-out client does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        received = b""
        while len(received) < 16_384:
            chunk = sock.recv(4096)
            assert chunk, "nginx closed before the abort"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 ")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return len(received)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_real_nginx_error_log_joins_access_log(stack: NginxUpstream) -> None:
    base = stack.base_url
    # (1) SSE stream cut by the upstream (no final chunk).
    with (
        httpx.Client(base_url=base, timeout=10) as client,
        pytest.raises(httpx.HTTPError),
        client.stream(
            "POST",
            "/v1/chat-messages?cut=1",
            json={"query": "hi", "response_mode": "streaming", "user": "u1"},
        ) as resp,
    ):
        assert resp.headers["content-type"] == "text/event-stream"
        for _ in resp.iter_raw():
            pass
    # (2) fixed-length body cut by the upstream (30000 of 100000 bytes).
    with (
        httpx.Client(base_url=base, timeout=10) as client,
        pytest.raises(httpx.HTTPError),
        client.stream("GET", "/v1/datasets?cut=1") as resp,
    ):
        for _ in resp.iter_raw():
            pass
    # (3) client resets mid-download of a 5 MB body.
    abort_download(stack.port, "/v1/datasets?size=5000000")
    # (4) a normal request.
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/v1/parameters").status_code == 200
    # (5) a cut with a URI long enough to push the error line over nginx's 2048-byte cap.
    long_uri = "/v1/datasets?cut=1&pad=" + "p" * 2500
    with (
        httpx.Client(base_url=base, timeout=10) as client,
        pytest.raises(httpx.HTTPError),
        client.stream("GET", long_uri) as resp,
    ):
        for _ in resp.iter_raw():
            pass

    uris = {
        "sse": "/v1/chat-messages?cut=1",
        "fixed": "/v1/datasets?cut=1",
        "abort": "/v1/datasets?size=5000000",
        "normal": "/v1/parameters",
        "long": long_uri,
    }
    by_uri = {line["request_uri"]: line for line in wait_for_lines(stack.paths.access_log, 5)}
    access = {name: by_uri[uri] for name, uri in uris.items()}

    def events_for(name: str) -> list[ErrorEvent]:
        key = access_key(access[name])
        return [e for e in error_events(stack.paths.error_log) if join_key(e) == key]

    for name in ("sse", "fixed", "abort"):
        wait_until(lambda n=name: bool(events_for(n)), 10, f"the {name} event in the error log")
    time.sleep(0.5)  # anything late about the normal request would show up by now
    events = error_events(stack.paths.error_log)
    text = stack.paths.error_log.read_text(errors="replace")

    for name in ("sse", "fixed"):
        line = access[name]
        # The access log cannot tell (1) from a whole stream: 200 and "OK".
        assert (line["status"], line["request_completion"]) == ("200", "OK")
        (event,) = events_for(name)
        assert event.kind == "upstream_closed", text
        assert event.level == "error"
        assert event.connection == line["connection"]
        assert (event.request_method, event.request_uri, event.request_protocol) == (
            line["request_method"],
            line["request_uri"],
            line["server_protocol"],
        )
        assert event.server == "audit-guard-demo"
        assert event.host == line["host"] + f":{stack.port}"
        assert event.upstream == f"http://{line['upstream_addr']}{line['request_uri']}"
        assert event.time_unix_nano is not None
        # nginx's local time (UTC here, TZ unset) within a few seconds of the access log's msec.
        assert abs(event.time_unix_nano / 1e9 - float(line["msec"])) < 5
        assert FLAG_FOR_KIND[event.kind] == "truncated:upstream_closed"

    abort_line = access["abort"]
    assert abort_line["status"] == "200"
    assert abort_line["request_completion"] == ""
    assert abort_line["body_bytes_sent"] < 5_000_000
    aborted = events_for("abort")
    assert [e.kind for e in aborted] == ["client_closed"], text
    assert aborted[0].level == "info"
    assert aborted[0].connection == abort_line["connection"]
    assert FLAG_FOR_KIND["client_closed"] == "truncated:request_incomplete"

    normal = access["normal"]
    assert (normal["status"], normal["request_completion"]) == ("200", "OK")
    assert not [
        e
        for e in events
        if e.connection == normal["connection"] and e.kind in ("upstream_closed", "client_closed")
    ], text

    # The capped line: 2047 bytes + newline, request line cut, so no join key, but the kind and
    # the connection still point at the request.
    capped = [e for e in events if e.connection == access["long"]["connection"] and e.cut]
    assert len(capped) == 1, text
    assert capped[0].kind == "upstream_closed"
    assert join_key(capped[0]) is None
    raw_lines = stack.paths.error_log.read_bytes().splitlines(keepends=True)
    assert len(raw_lines[capped[0].line - 1]) == MAX_LINE_BYTES

    # The readiness probes (connect, then close without a request) are nginx's idle-close line:
    # same words as an abort, but not one.
    idle = [e for e in events if e.message.endswith("while waiting for request")]
    assert idle and all(e.kind is None and join_key(e) is None for e in idle)
    # No two requests share a key here, so the join is unambiguous.
    assert len({access_key(line) for line in access.values()}) == len(access)
    assert detect_format(stack.paths.error_log.read_bytes().splitlines()[:20])
    assert not detect_format(stack.paths.access_log.read_bytes().splitlines()[:20])

    # `audit-guard replay` joins the two logs offline: the cut stream, which the access log
    # shows as 200/OK, is flagged on its access record; either file order gives the same result.
    def replay(*files: Path) -> dict[tuple[str | None, str], dict[str, Any]]:
        proc = subprocess.run(
            [sys.executable, "-m", "audit_guard.cli", "replay", *map(str, files)],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        out = [json.loads(x) for x in proc.stdout.splitlines()]
        return {(o["source"], o["fields"].get("request_id") or str(o["line"])): o for o in out}

    logs = (stack.paths.error_log, stack.paths.access_log)
    first, second = replay(*logs), replay(*reversed(logs))
    assert first == second

    def flags_of(name: str) -> list[str]:
        return first[("nginx", access[name]["request_id"])]["flags"]

    assert "truncated:upstream_closed" in flags_of("sse")
    assert first[("nginx", access["sse"]["request_id"])]["fields"]["nginx.error"].startswith(
        "upstream prematurely closed connection")
    assert {"truncated:upstream_closed", "truncated:response_short"} <= set(flags_of("fixed"))
    assert "truncated:request_incomplete" in flags_of("abort")
    assert not [f for f in flags_of("normal") if f.startswith("truncated:")]
    # the capped error line cannot be joined (its request line is cut): reported on its own
    alone = [o for (source, _), o in first.items() if source == "nginx_error"]
    assert [o["flags"] for o in alone] == [["truncated:upstream_closed"]]
    assert alone[0]["fields"]["connection"] == access["long"]["connection"]
