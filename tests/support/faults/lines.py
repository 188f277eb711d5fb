"""Access lines written straight into nginx's log, in the shipped format (backlog and poison).

The keys, their order and which values are bare JSON numbers are read from the shipped
otel/nginx/audit_log_format.conf itself, so a change of the format changes these lines too.
Lines are written with O_APPEND, whole, one write() each, as nginx writes its own lines: the
collector can never see half of one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from demo.nginx import snippet_dir

__all__ = ["POISONS", "access_line", "append_lines", "backlog_lines", "format_keys", "poison_line"]

# `"key":"$var"` (quoted) or `"key":$var` (bare number) inside the log_format strings.
_KEY = re.compile(r"'\"(\w+)\":(\"?)\$\w+")


@cache
def format_keys() -> tuple[tuple[str, bool], ...]:
    """(key, quoted) for every key of `log_format audit_json`, in the shipped order."""
    text = (snippet_dir() / "audit_log_format.conf").read_text()
    body = text.split("log_format audit_json", 1)[1].split("';", 1)[0]
    keys = tuple((m.group(1), m.group(2) == '"') for m in _KEY.finditer(body))
    if len(keys) < 10:
        raise RuntimeError(f"could not read the keys of log_format audit_json from {text[:80]!r}")
    return keys


def _defaults(request_id: str, msec: float, user_agent: str) -> dict[str, str]:
    """Raw JSON text per key for an ordinary audited request (what nginx would print)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(msec))
    values = {
        "time_iso8601": when, "msec": f"{msec:.3f}", "request_id": request_id,
        "connection": "7", "connection_requests": "1", "remote_addr": "127.0.0.1",
        "request_method": "POST", "request_uri": "/v1/chat-messages", "uri": "/v1/chat-messages",
        "server_protocol": "HTTP/1.1", "host": "127.0.0.1", "server_name": "audit-guard-demo",
        "status": "200", "request_completion": "OK", "body_bytes_sent": "312",
        "bytes_sent": "512", "sent_http_content_length": "312",
        "sent_http_content_type": "application/json", "upstream_status": "200",
        "upstream_response_length": "312", "upstream_bytes_received": "512",
        "upstream_response_time": "0.004", "upstream_addr": "127.0.0.1:5001",
        "request_time": "0.004", "http_user_agent": user_agent, "http_traceparent": "",
        "user_id": "backlog-user", "app_id": "backlog-app",
    }
    return values


def access_line(request_id: str | None = None, *, msec: float | None = None,
                user_agent: str = "fault-matrix/1.0", raw: dict[str, str] | None = None) -> bytes:
    """One line of the shipped format. `raw` overrides a key with JSON text as written (a
    quoted key's value is put between quotes, already escaped; a bare key's text as is)."""
    values = _defaults(request_id or secrets.token_hex(16),
                       time.time() if msec is None else msec,
                       json.dumps(user_agent)[1:-1])
    values.update(raw or {})
    parts = [f'"{key}":"{values[key]}"' if quoted else f'"{key}":{values[key]}'
             for key, quoted in format_keys()]
    return ("{" + ",".join(parts) + "}\n").encode("utf-8", "surrogatepass")


def backlog_lines(count: int, user_agent_chars: int = 300) -> Iterator[bytes]:
    """Ordinary audited lines with browser-sized user agents, stamped over the last minute."""
    base = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    start = time.time() - 60
    for i in range(count):
        agent = (base + f"Chrome/131.0.{i}.0 Safari/537.36 " * 12)[:user_agent_chars]
        yield access_line(msec=start + 60 * i / count, user_agent=agent)


# One odd value per poisoned line (issue #11, point 2): each is something a parser must turn
# into a flag on its record alone. Values are JSON text as it would stand in the line.
POISONS: tuple[tuple[str, dict[str, str]], ...] = (
    ("msec -1", {"msec": "-1"}),
    ("year 9999", {"msec": "253402300799.000", "time_iso8601": "9999-12-31T23:59:59+00:00"}),
    ("status 70000", {"status": "70000"}),
    ("bytes beyond int64", {"body_bytes_sent": "99999999999999999999",
                            "bytes_sent": "99999999999999999999"}),
    ("lone surrogate", {"http_user_agent": "\\ud800 lone surrogate",
                        "request_uri": "/v1/chat-messages?q=\\udfff"}),
    ("year 0001", {"msec": "-62135596800.000", "time_iso8601": "0001-01-01T00:00:00+00:00"}),
)


def poison_line(n: int) -> tuple[str, bytes]:
    """The n-th poisoned line (cycling through POISONS) and what is odd about it."""
    what, raw = POISONS[n % len(POISONS)]
    return what, access_line(raw=raw)


def append_lines(path: Path, lines: Iterable[bytes], chunk: int = 1) -> int:
    """Append lines with O_APPEND, `chunk` lines per write() (1: one write per line, as nginx
    does; a backlog written before the chain starts may use bigger chunks). Returns the count."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    count = 0
    try:
        buf: list[bytes] = []
        for line in lines:
            buf.append(line)
            count += 1
            if len(buf) >= chunk:
                os.write(fd, b"".join(buf))
                buf.clear()
        if buf:
            os.write(fd, b"".join(buf))
    finally:
        os.close(fd)
    return count
