"""Nginx error-log lines → ErrorEvent: the only place a cut SSE stream leaves a trace.

A line, as ngx_log_error_core writes it (nginx 1.22):

    2026/11/26 15:45:40 [error] 29689#29689: *3 upstream prematurely closed connection while
    reading upstream, client: 127.0.0.1, server: audit-guard-demo, request: "POST /x HTTP/1.1",
    upstream: "http://127.0.0.1:36025/x", host: "127.0.0.1:41001"

(one line in the file). `*N` is the connection serial, the same number the access log records as
`$connection`; it is absent for process-level lines ("start worker process …"). The trailing
context (`, client: …, server: …, request: "…", subrequest: "…", upstream: "…", host: "…",
referrer: "…"`, always in that order, each part optional after `client`) is appended by the http
module; the message before it keeps nginx's ` while <action>` suffix. The time is nginx's local
time without a zone: it is read as UTC unless a tz is given.

nginx does not escape anything in the context: a request line or Host header may hold `"` or
`, `. The context is therefore found by trying each `, client: ` from the left and keeping the
first one after which the rest parses as a context; only a request line that itself contains
`", host: "`-like text can still mislead it.

Lines are capped at NGX_MAX_ERROR_STR = 2048 bytes including the newline, so a capped line is
2047 bytes of text. Such a line, or one whose last quoted context value has no closing quote,
is marked `cut`: its message or request line may be incomplete (join_key then gives None when the
request line itself was cut).

`kind` classifies the message by what failed and what nginx was doing (the ` while <action>`
suffix), and FLAG_FOR_KIND maps it into the flag vocabulary (audit_guard.flags) for the access
record the event joins to. Only a response cut after its header went out is a cut: before it,
nginx answers 502/504 (or 499) itself and the access log already shows it.

    upstream_closed         → truncated:upstream_closed    upstream prematurely closed
                                                           connection, after the header
    upstream_reset          → truncated:upstream_closed    recv()/readv()/SSL_read() failed
                                                           (104: reset …), after the header
    upstream_timeout        → truncated:upstream_closed    upstream timed out (110: …) while
                                                           reading upstream (proxy_read_timeout
                                                           mid-body); the vocabulary has no
                                                           separate reason
    client_closed           → truncated:request_incomplete client prematurely closed
                                                           connection; writev()/send()/
                                                           sendfile() failed (104|32: …) or
                                                           SSL_write() failed while writing to
                                                           the client ($request_completion is
                                                           empty too)
    client_timeout          → truncated:request_incomplete client timed out (110: …) while
                                                           sending to client (send_timeout)
    upstream_before_header  → None  (timed out, closed or reset while connecting, sending the
                                     request or reading the response header: a 502/504)
    header_too_big          → None  (nginx answered 502 itself; nothing was cut)
    buffered_to_temp_file   → None  (a warning about disk spill, not a truncation)

Idle keep-alive connections going away ("client closed connection while waiting for request",
"client … closed keepalive connection") and a client leaving during the TLS handshake ("client
closed connection while SSL handshaking") are no request at all: no kind.

What real nginx 1.22.1 (proxy_buffering off) wrote, see tests/test_nginx_error.py:
  cut SSE stream     [error] … upstream prematurely closed connection while reading upstream
  cut fixed body     [error] … upstream prematurely closed connection while sending to client
  client RST         [info]  … writev() failed (104: Connection reset by peer) while reading
                     upstream   (most runs; the action is whatever nginx was doing), or
                     … writev() failed (104: …) while sending to client, or
                     … epoll_wait() reported that client prematurely closed connection, so
                     upstream connection is closed too (104: …) while reading upstream
  idle close         [info]  … client closed connection while waiting for request, and
                     [info]  … client 127.0.0.1 closed keepalive connection   (not aborts)

Nothing here reads the clock or does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import tzinfo

from .. import flags
from ..grammar import timestamps

__all__ = [
    "FLAG_FOR_KIND",
    "KINDS",
    "LEVELS",
    "MAX_LINE_BYTES",
    "ErrorEvent",
    "classify",
    "detect_format",
    "join_key",
    "parse_line",
    "parse_lines",
]

# NGX_MAX_ERROR_STR: the whole line, newline included, fits in this many bytes.
MAX_LINE_BYTES = 2048
# Text of a capped line once its newline is stripped (what collectors hand over).
_CAPPED_TEXT_BYTES = MAX_LINE_BYTES - 1

LEVELS = ("emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")

UPSTREAM_CLOSED = "upstream_closed"
UPSTREAM_RESET = "upstream_reset"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_BEFORE_HEADER = "upstream_before_header"
CLIENT_CLOSED = "client_closed"
CLIENT_TIMEOUT = "client_timeout"
HEADER_TOO_BIG = "header_too_big"
BUFFERED_TO_TEMP_FILE = "buffered_to_temp_file"
KINDS = (UPSTREAM_CLOSED, UPSTREAM_RESET, UPSTREAM_TIMEOUT, UPSTREAM_BEFORE_HEADER, CLIENT_CLOSED,
         CLIENT_TIMEOUT, HEADER_TOO_BIG, BUFFERED_TO_TEMP_FILE)

# Every kind is a key, so FLAG_FOR_KIND[kind] never raises; None = not a truncation.
FLAG_FOR_KIND: dict[str, str | None] = {
    UPSTREAM_CLOSED: flags.truncated(flags.UPSTREAM_CLOSED),
    UPSTREAM_RESET: flags.truncated(flags.UPSTREAM_CLOSED),
    UPSTREAM_TIMEOUT: flags.truncated(flags.UPSTREAM_CLOSED),
    UPSTREAM_BEFORE_HEADER: None,
    CLIENT_CLOSED: flags.truncated(flags.REQUEST_INCOMPLETE),
    CLIENT_TIMEOUT: flags.truncated(flags.REQUEST_INCOMPLETE),
    HEADER_TOO_BIG: None,
    BUFFERED_TO_TEMP_FILE: None,
}


@dataclass(slots=True)
class ErrorEvent:
    line: int  # the caller's line number (replay: 1-based line in the file)
    time_unix_nano: int | None  # None only for console lines (`nginx: [emerg] …`)
    level: str
    pid: int | None
    tid: int | None
    connection: int | None  # `*N`: the access log's $connection
    message: str  # without the `, client: …` context; keeps the ` while <action>` suffix
    client: str | None
    server: str | None
    host: str | None
    upstream: str | None
    referrer: str | None
    request_method: str | None
    request_uri: str | None
    request_protocol: str | None
    cut: bool  # the line hit nginx's 2048-byte cap or lost its closing quote
    kind: str | None
    # Where the line is in its file, when known (the collector's record offset; replay's line
    # number): two identical lines at two places are two events, the same line sent again is
    # one.
    at: int | None = None


_LEVEL = "|".join(LEVELS)
_HEADER = re.compile(
    r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) \[(" + _LEVEL + r")\] (\d+)#(\d+): "
    r"(?:\*(\d+) )?(.*)",
    re.DOTALL,
)
# The same header, for sniffing raw bytes without decoding them.
_HEADER_BYTES = re.compile(
    rb"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?:" + _LEVEL.encode() + rb")\] \d+#\d+: "
)
# What nginx prints on the console before the error log is open (`nginx -t`, start-up).
_CONSOLE = re.compile(r"nginx: \[(" + _LEVEL + r")\] (.*)", re.DOTALL)

# The http context after `, client: `. Quoted values are matched lazily up to the quote that is
# followed by the next known key or the end, which is what lets them hold `"` and `, `. The
# client is an address (no `, `), the server a server_name or listen address.
_CONTEXT = re.compile(
    r"(?P<client>[^,]*)"
    r"(?:, server: (?P<server>[^,]*))?"
    r'(?:, request: "(?P<request>.*?)")?'
    r'(?:, subrequest: "(?P<subrequest>.*?)")?'
    r'(?:, upstream: "(?P<upstream>.*?)")?'
    r'(?:, host: "(?P<host>.*?)")?'
    r'(?:, referrer: "(?P<referrer>.*?)")?',
    re.DOTALL,
)
_CLIENT_KEY = ", client: "
# A cut line may end inside a key (`, hos`, `, host:`); dropping that fragment lets the rest
# parse. Only tried on lines already known to be cut.
_PARTIAL_KEY = re.compile(r", ?[a-z]*:? ?$")

# What nginx was doing when it wrote the line: the ` while <action>` suffix of the message
# (c->log->action; the upstream connection logs with the client connection's log, so an upstream
# failure carries the request's current action).
# Once the response header went to the client nginx only moves the body: the upstream handlers
# set "reading upstream", the client handlers and ngx_http_upstream_finalize_request "sending to
# client" (ngx_http_upstream.c), and either handler reads the upstream and writes the client.
_AFTER_HEADER = r" while (?:reading upstream|sending to client)$"
# Before it nginx answers 502/504 itself and the access log shows that status: no cut.
_BEFORE_HEADER = (r" while (?:connecting to upstream|SSL handshaking to upstream"
                  r"|sending request to upstream|reading response header from upstream)$")
# Writes to the client: the proxy's body handlers above, and the static/writer handlers'
# "sending response to client" (ngx_http_static_module.c, ngx_http_request.c).
_TO_CLIENT = r" while (?:sending (?:response )?to client|reading upstream)$"
# nginx reads the upstream with recv() (unbuffered, ngx_unix_recv), readv() (proxy_buffering,
# ngx_readv_chain) or SSL_read() (proxy_pass https://), and writes the client with writev(),
# send(), sendfile() or SSL_write() (ngx_*_chain, ngx_ssl_send_chain).
_UPSTREAM_READ = r"^(?:recv|readv|SSL_read)\(\) failed "
_CLIENT_WRITE = r"^(?:writev|send|sendfile|sendmsg)\(\) failed \((?:104|32): [^)]*\)"

# First match wins. The response the client got is incomplete when the upstream closed, reset
# or stalled after the header (→ truncated:upstream_closed), or when the client went away or
# stopped reading (→ truncated:request_incomplete). Each line is quoted from nginx 1.22 in
# tests/test_nginx_error.py.
_KIND_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern)) for kind, pattern in (
        # ngx_http_read_client_request_body, ngx_http_read_request_header and
        # ngx_http_upstream_check_broken_connection (that one also as "epoll_wait() reported
        # that client prematurely closed connection, so upstream connection is closed too").
        (CLIENT_CLOSED, r"client prematurely closed connection"),
        # The client reset the connection (104) or was gone (32) while nginx wrote to it.
        (CLIENT_CLOSED, _CLIENT_WRITE + _TO_CLIENT),
        (CLIENT_CLOSED, r"^SSL_write\(\) failed .*" + _TO_CLIENT),
        # send_timeout: the client stopped reading (ngx_http_upstream_process_*downstream,
        # ngx_http_writer). "while reading client request …" is a 408, no response yet.
        (CLIENT_TIMEOUT, r"^client timed out .*" + _TO_CLIENT),
        (UPSTREAM_CLOSED, r"^upstream prematurely closed connection" + _AFTER_HEADER),
        (UPSTREAM_RESET, _UPSTREAM_READ + r".*" + _AFTER_HEADER),
        (UPSTREAM_TIMEOUT, r"^upstream timed out .*" + _AFTER_HEADER),
        (UPSTREAM_BEFORE_HEADER,
         r"^(?:upstream prematurely closed connection|upstream timed out |(?:recv|readv|SSL_read"
         r"|writev|send|SSL_write|connect)\(\) failed ).*" + _BEFORE_HEADER),
        (HEADER_TOO_BIG, r"upstream sent too big header"),
        (BUFFERED_TO_TEMP_FILE, r"an upstream response is buffered to a temporary file"),
    )
)


def classify(message: str) -> str | None:
    """The kind of an error-log message (one of KINDS), or None."""
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(message):
            return kind
    return None


def _candidates(text: str) -> list[tuple[int, str]]:
    """Every `, client: ` in the line: (its index, the text after it)."""
    found = []
    start = text.find(_CLIENT_KEY)
    while start >= 0:
        found.append((start, text[start + len(_CLIENT_KEY) :]))
        start = text.find(_CLIENT_KEY, start + 1)
    return found


def _context(text: str, capped: bool) -> tuple[int, re.Match[str] | None, bool]:
    """(start of the context, its match, whether the line ends inside a quoted value).

    The first `, client: ` after which the rest is a whole context wins. Failing that, the line
    was cut (by the cap, or by whatever lost its tail): a rest that parses once its closing quote
    is restored ended inside a value; a capped line may also end inside a key name.
    """
    candidates = _candidates(text)
    for start, rest in candidates:
        m = _CONTEXT.fullmatch(rest)
        if m is not None:
            return start, m, False
    for start, rest in candidates:
        m = _CONTEXT.fullmatch(rest + '"')
        if m is not None:
            return start, m, True
    if capped:
        for start, rest in candidates:
            m = _CONTEXT.fullmatch(_PARTIAL_KEY.sub("", rest))
            if m is not None:
                return start, m, False
    return len(text), None, False


def _split_request(request: str | None) -> tuple[str | None, str | None, str | None]:
    """`GET /a b HTTP/1.1` → (method, uri, protocol). nginx accepts spaces inside the URI (it
    sets space_in_uri), so the URI is everything between the first and the last space."""
    if not request:
        return None, None, None
    method, sep, rest = request.partition(" ")
    if not sep:
        return method or None, None, None
    uri, sep, protocol = rest.rpartition(" ")
    if sep and protocol.startswith("HTTP/"):
        return method, uri, protocol
    return method, rest or None, None  # HTTP/0.9 (no protocol), or cut before it


def _decode(raw: bytes | str) -> tuple[str, int]:
    """(text without its line terminator, its length in bytes as nginx counted them)."""
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
            data = raw.encode("utf-8", "replace")
    else:
        data = raw
    data = data.rstrip(b"\r\n")
    # Non-UTF-8 bytes (a raw request URI) must not make a line unreadable.
    return data.decode("utf-8", "replace"), len(data)


def parse_line(line: int, raw: bytes | str, tz: tzinfo | None = None) -> ErrorEvent | None:
    """One error-log line → ErrorEvent; None when it is not an nginx error-log line."""
    text, size = _decode(raw)
    m = _HEADER.fullmatch(text)
    time_unix_nano: int | None = None
    pid = tid = connection = None
    if m is not None:
        if not timestamps.civil_ok(*map(int, m.group(1, 2, 3, 4, 5, 6))):
            return None  # digits in the right places, but not a date: not nginx's
        # A year before 1970 or after 2262 is no time a span can carry: the event keeps none.
        time_unix_nano = timestamps.nginx_error_time_ns(text[:19], tz)
        level, pid, tid = m.group(7), int(m.group(8)), int(m.group(9))
        connection = int(m.group(10)) if m.group(10) is not None else None
        body = m.group(11)
    else:
        console = _CONSOLE.fullmatch(text)
        if console is None:
            return None
        level, body = console.group(1), console.group(2)

    capped = size >= _CAPPED_TEXT_BYTES
    start, ctx, unclosed = _context(body, capped)
    cut = capped or unclosed
    message = body[:start]
    client = server = host = upstream = referrer = request = None
    if ctx is not None:
        client = ctx.group("client") or None
        server = ctx.group("server") or None
        request, host = ctx.group("request"), ctx.group("host")
        upstream, referrer = ctx.group("upstream"), ctx.group("referrer")
    method, uri, protocol = _split_request(request)
    return ErrorEvent(
        line=line,
        time_unix_nano=time_unix_nano,
        level=level,
        pid=pid,
        tid=tid,
        connection=connection,
        message=message,
        client=client,
        server=server,
        host=host,
        upstream=upstream,
        referrer=referrer,
        request_method=method,
        request_uri=uri,
        request_protocol=protocol,
        cut=cut,
        kind=classify(message),
    )


def parse_lines(
    lines: Iterable[tuple[int, bytes | str]], tz: tzinfo | None = None
) -> list[ErrorEvent]:
    """(line number, line) pairs → events, in order; lines that are not nginx error-log lines
    (blank lines, another program's output) are skipped."""
    events = []
    for number, raw in lines:
        event = parse_line(number, raw, tz)
        if event is not None:
            events.append(event)
    return events


def detect_format(sample_lines: list[bytes]) -> bool:
    """Is this sample (the first lines of a file) an nginx error log?

    Most non-blank lines must carry the `YYYY/MM/DD HH:MM:SS [level] pid#tid: ` header; a few
    strays are tolerated because other programs (a wrapper script, `nginx -t`) may share the file.
    """
    candidates = [line for line in sample_lines if line.strip()]
    if not candidates:
        return False
    hits = sum(1 for line in candidates if _HEADER_BYTES.match(line))
    return hits > 0 and hits * 5 >= len(candidates) * 4  # at least 80 %


def join_key(event: ErrorEvent) -> tuple[int, str, str] | None:
    """(connection, method, request_uri), to match an access record that logged $connection,
    $request_method and $request_uri. The connection alone is not enough: keep-alive puts
    several requests on one connection. None when the event has no request, or when the cap cut
    the request line (its URI would be a prefix that matches nothing)."""
    if event.connection is None or event.request_method is None or event.request_uri is None:
        return None
    if event.cut and event.request_protocol is None:
        return None
    return event.connection, event.request_method, event.request_uri
