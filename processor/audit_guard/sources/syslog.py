"""syslog messages → the log line the application wrote (pure, no I/O).

Docker's `syslog` logging driver (moby daemon/logger/syslog) sends each line a container
writes as one message; so do `logger` (util-linux) and rsyslog forwarding. Two layouts:

* RFC 5424 (`syslog-format=rfc5424|rfc5424micro`, `logger --rfc5424`):
  `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG`. Docker writes its
  `tag` as APP-NAME and MSGID, dockerd's pid as PROCID, `-` as structured data, and the time
  it sends the line (seconds, or µs with rfc5424micro) as TIMESTAMP.
* RFC 3164 (Docker's default, `logger --rfc3164`): `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`.
  Its time has no year, no zone and whole seconds only, so no ingest lag is measured from it.

Docker's `tag` option is a template (`{{.ID}}` by default, `{{.Name}}/{{.ID}}`,
`{{.ImageName}}`, …): it may hold `/`, `.`, `-` and is kept as written. Over TCP a message may
be octet-counted (RFC 6587: `LEN SP MESSAGE`, `logger --octet-count`); the count is checked.

A message cut on the way is kept, never dropped, and said to be cut (`SyslogMessage.cut`):
its octet count promises more bytes than came, or it is exactly as long as a cap a sender or
transport cuts at (`SIZE_CAPS`: logger's and RFC 3164's 1024-byte message, RFC 5424's 2048-byte
minimum, rsyslog's and the collector's 8 KiB, the largest UDP datagram). A cut JSON line is
also found by the app parser (`truncated:json_cut`); this says why (`truncated:size_limit`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..grammar import timestamps

__all__ = ["SIZE_CAPS", "SyslogMessage", "parse_message"]

# Sizes in bytes a sender or a transport cuts syslog messages at: a message (or its MSG part)
# of exactly one of these lengths was most likely cut there.
SIZE_CAPS = frozenset({1024, 2048, 4096, 8192, 65507})

_OCTET_COUNT = re.compile(r"(\d{1,9}) (?=<)", re.ASCII)
_PRI = re.compile(r"<(\d{1,3})>", re.ASCII)
_RFC5424_HEAD = re.compile(r"1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_RFC3164_HEAD = re.compile(r"([A-Z][a-z]{2}) ([ \d]\d) (\d\d:\d\d:\d\d) (\S+) ", re.ASCII)
_RFC3164_TAG = re.compile(r"([^\s\[:]{1,128})(?:\[([^\]\s]*)\])?: ?")
_BOM = "\ufeff"


@dataclass(slots=True)
class SyslogMessage:
    message: str  # the MSG part: the application's line
    protocol: str  # "rfc5424", "rfc3164" or "" (no header found: the whole text is the line)
    app_name: str | None = None  # APP-NAME / TAG: Docker's `tag`
    hostname: str | None = None
    proc_id: str | None = None
    time_unix_nano: int | None = None  # RFC 5424's TIMESTAMP; None for RFC 3164
    cut: bool = False  # see the module doc


def _structured_data_end(text: str) -> int | None:
    """Where RFC 5424's STRUCTURED-DATA ends in `text` (which starts with it), None when it
    is not well formed (a `]` inside a quoted value is escaped as `\\]`)."""
    if text.startswith("-"):
        return 1
    i = 0
    while i < len(text) and text[i] == "[":
        quoted = False
        i += 1
        while i < len(text):
            c = text[i]
            if c == "\\" and quoted:
                i += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == "]" and not quoted:
                break
            i += 1
        else:
            return None
        i += 1
    return i or None


def _rfc5424(rest: str) -> SyslogMessage | None:
    head = _RFC5424_HEAD.match(rest)
    if head is None:
        return None
    stamp, host, app, proc, _msgid = head.groups()
    body = rest[head.end():]
    end = _structured_data_end(body)
    if end is None:
        return None
    message = body[end + 1:] if body[end:end + 1] == " " else body[end:]
    if message.startswith(_BOM):
        message = message[1:]
    return SyslogMessage(message, "rfc5424", None if app == "-" else app,
                         None if host == "-" else host, None if proc == "-" else proc,
                         None if stamp == "-" else timestamps.iso8601_ns(stamp))


def _rfc3164(rest: str) -> SyslogMessage | None:
    head = _RFC3164_HEAD.match(rest)
    if head is None:
        return None
    host = head.group(4)
    body = rest[head.end():]
    tag = _RFC3164_TAG.match(body)
    if tag is None:
        return SyslogMessage(body, "rfc3164", None, host)
    return SyslogMessage(body[tag.end():], "rfc3164", tag.group(1), host, tag.group(2) or None)


def parse_message(raw: str | bytes) -> SyslogMessage:
    """One syslog message (optionally octet-counted) → its parts. Never raises: text without
    a syslog header is the application's line as it stands (protocol "")."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r\n")
    declared: int | None = None
    counted = _OCTET_COUNT.match(text)
    if counted is not None:
        declared = int(counted.group(1))
        text = text[counted.end():]
    size = len(text.encode("utf-8", "surrogatepass"))
    pri = _PRI.match(text)
    parsed = None
    if pri is not None:
        rest = text[pri.end():]
        parsed = _rfc5424(rest) or _rfc3164(rest)
    if parsed is None:
        parsed = SyslogMessage(text, "")
    message_size = len(parsed.message.encode("utf-8", "surrogatepass"))
    parsed.cut = ((declared is not None and declared > size)
                  or size in SIZE_CAPS or message_size in SIZE_CAPS)
    return parsed
