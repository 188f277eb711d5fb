"""Which format a log file is in, from its first lines, and why (pure: lines in, verdict out).

`audit-guard replay` reads files whose format nobody declared. A wrong guess is not a small
error: an app's audit log read as an Nginx access log makes every app record a `duplicate` of
its own Nginx record and every request a false `missing_record`. So the decision rests only on
what ONE format writes, never on keys every HTTP log has (`request_id`, `status`, `method`,
`path`, `uri`, `user_id`, `app_id`, `time`):

* Docker json-file / CRI wrappers (`container.detect_format`) and journal entries printed by
  `journalctl -o json` (`journald.detect_format`: Docker's journald driver); the wrapped lines
  are then recombined and decided the same way as a plain file.
* PostgreSQL logs (stderr, csvlog, jsonlog; `pgaudit.detect_format`). jsonlog must also carry
  PostgreSQL's `error_severity`: an app's `{"timestamp", "message"}` line is not a PostgreSQL
  entry.
* nginx error logs (the `YYYY/MM/DD HH:MM:SS [level] pid#tid:` header on most lines).
* JSON lines vote per line. Nginx: the names of nginx variables (`NGINX_VARIABLE_KEYS`,
  `upstream_*`, `sent_http_*`, `http_x_*`, `request_method` with `request_uri`), the shipped
  `audit_json` format's and the seed article's short format's (`msec`, `request_time`; its `ip`
  counts half, apps log an `ip` too). App: what a logging library writes and an access log does
  not (`level`, `severity`, `levelname`, `message`, `msg`, `event`, `logger`; Dify's `caller`,
  `stack_trace`; a millisecond duration, which nginx has no variable for). A line votes for the
  side with more; an equal count is a tie and votes for neither.
* Dify's text lines (what `audit_guard.sources.app` parses as its text format) vote app.

The file is decided when one side has at least twice the other's votes. A tie, a split file
or one without any telling line is undecided (`Detection.format is None`) with the reason: the
caller asks the operator for `--source`. Nothing is guessed silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from .. import flags
from . import app, container, journald, nginx_error, pgaudit
from .jsonline import decode_json_object

__all__ = [
    "APP_KEYS", "CONTENT_FORMATS", "FORMATS", "NGINX_VARIABLE_KEYS", "Detection", "Evidence",
    "container_log", "decide_content", "detect", "detect_plain", "forced", "line_evidence",
    "nginx_error_log", "object_evidence", "postgres_log", "recombine",
]

NGINX, APP, PGAUDIT, NGINX_ERROR = "nginx", "app", "pgaudit", "nginx_error"
JOURNALD = "journald"
# Every format a file can be read as; CONTENT_FORMATS may sit inside a container wrapper.
FORMATS = (NGINX, NGINX_ERROR, APP, PGAUDIT, container.DOCKER, container.CRI, JOURNALD)
CONTENT_FORMATS = (NGINX, APP)
WRAPPER_NAMES = {container.DOCKER: "Docker json-file", container.CRI: "CRI",
                 JOURNALD: "journal (journalctl -o json or export)"}
_FORCED_LABELS = {NGINX: "nginx access", APP: "app", PGAUDIT: "PostgreSQL (pgaudit)",
                  NGINX_ERROR: "nginx error log"}

# Nginx variable names an app does not log under these names (keys compared lower-cased).
NGINX_VARIABLE_KEYS = frozenset({
    "msec", "request_time", "remote_addr", "remote_port", "remote_user", "binary_remote_addr",
    "realip_remote_addr", "body_bytes_sent", "bytes_sent", "request_length", "time_local",
    "time_iso8601", "request_completion", "connection_requests", "server_protocol",
    "http_user_agent", "http_referer", "http_x_forwarded_for", "http_traceparent", "http_host",
    "gzip_ratio", "pipe", "ssl_protocol", "ssl_cipher",
})
NGINX_VARIABLE_PREFIXES = ("upstream_", "sent_http_", "http_x_")
# Nginx only together: an app may name its method or its URL like this, not both.
NGINX_KEY_PAIRS = (("request_method", "request_uri"),)
# The seed article's short log_format keys that are not nginx variables; apps log them too.
NGINX_WEAK_KEYS = frozenset({"ip"})
# What a logging library writes into every line and an access log has no variable for.
APP_KEYS = frozenset({
    "level", "severity", "levelname", "loglevel", "log.level", "message", "msg", "event",
    "logger", "logger_name", "caller", "stack_trace", "exc_info", "duration_ms", "latency_ms",
    "elapsed_ms",
})
DIFY_TEXT = "Dify's text layout"
_MAJORITY = 2  # the winner needs this many times the other side's votes
_SHOWN_KEYS = 4
# Named first in a reason when a line has them: the keys an operator recognizes at once.
_SHOWN_FIRST = ("msec", "request_time", "remote_addr", "request_method+request_uri",
                "body_bytes_sent", "ip", "level", "severity", "levelname", "event", "message",
                "msg", "logger")


@dataclass(frozen=True)
class Evidence:
    """One sampled line's vote: NGINX, APP, "tie" or None (nothing telling), and the telling
    keys (or DIFY_TEXT) found, both sides."""

    vote: str | None
    nginx: tuple[str, ...] = ()
    app: tuple[str, ...] = ()
    json: bool = True


@dataclass(frozen=True)
class Detection:
    """A file's format (None: undecided), what it is in words, and why."""

    format: str | None
    label: str
    why: str
    inner: str | None = None  # docker/cri: the wrapped lines' format
    forceable: bool = True  # undecided: would naming the format with --source help?

    def __str__(self) -> str:
        return f"{self.label} ({self.why})"


# -- one line ---------------------------------------------------------------------------------


def object_evidence(obj: Mapping[str, object]) -> Evidence:
    """The vote of one decoded JSON object, from its top-level keys."""
    keys = {str(k).lower() for k in obj}
    strong = [k for k in keys
              if k in NGINX_VARIABLE_KEYS or k.startswith(NGINX_VARIABLE_PREFIXES)]
    strong += ["+".join(pair) for pair in NGINX_KEY_PAIRS if keys.issuperset(pair)]
    weak = [k for k in keys if k in NGINX_WEAK_KEYS]
    app_side = sorted(k for k in keys if k in APP_KEYS)
    nginx_score, app_score = 2 * len(strong) + len(weak), 2 * len(app_side)
    if nginx_score == app_score:
        vote = "tie" if nginx_score else None
    else:
        vote = NGINX if nginx_score > app_score else APP
    return Evidence(vote, tuple(sorted(strong) + sorted(weak)), tuple(app_side))


def line_evidence(line: bytes) -> Evidence:
    """The vote of one sampled line: a JSON object by its keys, Dify's text layout as app."""
    text = line.strip()
    if text.startswith(b"{"):
        decoded = decode_json_object(text)  # a cut line still shows its first keys
        return object_evidence(decoded.obj)
    if flags.MALFORMED not in app.parse_lines([text]).flags.get(0, ()):
        return Evidence(APP, app=(DIFY_TEXT,), json=False)
    return Evidence(None, json=False)


# -- the whole sample -------------------------------------------------------------------------


def _keys_shown(counts: Counter[str]) -> str:
    def rank(key: str) -> tuple[int, int, str]:
        first = _SHOWN_FIRST.index(key) if key in _SHOWN_FIRST else len(_SHOWN_FIRST)
        return -counts[key], first, key

    keys = sorted(counts, key=rank)[:_SHOWN_KEYS]
    return ", ".join(keys) + (" …" if len(counts) > _SHOWN_KEYS else "")


def _content_label(winner: str, votes: list[Evidence]) -> str:
    if winner == NGINX:
        return "nginx access JSON"
    json_votes = {e.json for e in votes if e.vote == APP}
    if json_votes == {True}:
        return "app JSON"
    return "app text (Dify)" if json_votes == {False} else "app JSON and text"


def decide_content(evidence: list[Evidence]) -> Detection:
    """nginx or app from the sampled lines' votes, or undecided with the counts."""
    total = len(evidence)
    votes = Counter(e.vote for e in evidence)
    nginx_keys = Counter(k for e in evidence if e.vote == NGINX for k in e.nginx)
    app_keys = Counter(k for e in evidence if e.vote == APP for k in e.app)
    sides = {NGINX: (votes[NGINX], nginx_keys), APP: (votes[APP], app_keys)}
    winner = max(sides, key=lambda s: sides[s][0])
    loser = APP if winner == NGINX else NGINX
    won, lost = sides[winner][0], sides[loser][0]
    ties = f"; {votes['tie']} with as many Nginx keys as app keys" if votes["tie"] else ""
    if not won:
        return Detection(None, "format not recognized",
                         f"none of {total} sampled line(s) has a key only Nginx or only an "
                         f"app writes (Nginx: msec, request_time, remote_addr, upstream_*; "
                         f"app: level, severity, message, event){ties}")
    if won < _MAJORITY * lost:
        return Detection(None, "format not recognized",
                         f"split: {votes[NGINX]}/{total} sampled lines look like Nginx "
                         f"({_keys_shown(nginx_keys)}), {votes[APP]}/{total} like an app "
                         f"({_keys_shown(app_keys)}){ties}")
    why = f"{won}/{total} sampled lines have {_keys_shown(sides[winner][1])}"
    if lost:
        why += f"; {lost} look like {'an app' if loser == APP else 'Nginx'}"
    return Detection(winner, _content_label(winner, evidence), why + ties)


def postgres_log(sample: list[bytes]) -> Detection | None:
    """A PostgreSQL log (pgaudit's AUDIT: lines are read from it), or None."""
    fmt = pgaudit.detect_format(sample)
    if fmt is None:
        return None
    if fmt == "jsonlog":
        objs = [decode_json_object(x).obj for x in sample if x.strip().startswith(b"{")]
        if sum("error_severity" in o for o in objs) * 2 <= len(objs):
            return None  # an app's {"timestamp", "message"} JSON, not PostgreSQL's jsonlog
    audits = sum(b"AUDIT: " in line for line in sample)
    return Detection(PGAUDIT, f"PostgreSQL {fmt}",
                     f"{audits}/{len(sample)} sampled lines carry pgaudit's AUDIT:")


def nginx_error_log(sample: list[bytes]) -> Detection | None:
    """An nginx error log, or None."""
    if not nginx_error.detect_format(sample):
        return None
    hits = sum(nginx_error.detect_format([line]) for line in sample)
    return Detection(NGINX_ERROR, "nginx error log",
                     f"{hits}/{len(sample)} sampled lines have its 'YYYY/MM/DD HH:MM:SS "
                     "[level] pid#tid:' header")


def detect_plain(sample: list[bytes]) -> Detection:
    """The format of lines that are not inside a container wrapper."""
    lines = [line for line in sample if line.strip()]
    if not lines:
        return Detection(NGINX, "empty", "no line to read")
    return (postgres_log(lines) or nginx_error_log(lines)
            or decide_content([line_evidence(line) for line in lines]))


def recombine(wrapper: str, numbered: list[tuple[int, bytes]]) -> list[container.ContainerLine]:
    """A wrapper's physical lines → the logical lines it wraps (docker, cri or journald)."""
    if wrapper == container.DOCKER:
        return container.recombine_docker(numbered)
    if wrapper == JOURNALD:
        return journald.recombine(journald.sample_entries(numbered))
    return container.recombine_cri(numbered)


def _unwrapped(wrapper: str, sample: list[bytes]) -> list[bytes]:
    entries = recombine(wrapper, list(enumerate(sample, 1)))
    return [e.content.encode() for e in entries if not e.malformed]


def _wrapper_format(sample: list[bytes]) -> str | None:
    return JOURNALD if journald.detect_format(sample) else container.detect_format(sample)


def container_log(sample: list[bytes]) -> Detection | None:
    """A Docker json-file, CRI or journal (JSON) log with the format of the lines it wraps,
    or None."""
    wrapper = _wrapper_format(sample)
    if wrapper is None:
        return None
    inner = detect_plain(_unwrapped(wrapper, sample))
    return _wrapped(wrapper, inner)


def _wrapped(wrapper: str, inner: Detection) -> Detection:
    name = WRAPPER_NAMES[wrapper]
    if inner.format is None:
        return Detection(None, f"{name} log, wrapped lines' format not recognized", inner.why)
    if inner.format not in CONTENT_FORMATS and inner.label != "empty":
        return Detection(None, f"{inner.label} inside {name}",
                         f"replay reads only Nginx access and app lines inside container logs, "
                         f"not {inner.label} ({inner.why}); replay the container's output "
                         "instead (docker logs CONTAINER > FILE)", forceable=False)
    return Detection(wrapper, f"{inner.label} inside {name}", inner.why, inner=inner.format)


def detect(sample: list[bytes]) -> Detection:
    """The format of a file from its first lines (container wrappers first)."""
    return container_log(sample) or detect_plain(sample)


def forced(fmt: str, sample: list[bytes], given_as: str) -> Detection:
    """The operator's format for a file (`given_as`: the option that said so).

    docker/cri: the wrapped lines' format is still detected; when it cannot be, they are read
    as app lines, as the service reads container logs (the shipped collector config gives them
    audit.source "app"), and the reason says so. nginx/app for a file that is a container log:
    the wrapper is read and the forced format applies to the lines inside.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    wrapper = _wrapper_format(sample) if fmt in CONTENT_FORMATS else None
    if fmt in WRAPPER_NAMES:
        inner = detect_plain(_unwrapped(fmt, sample))
        found = _wrapped(fmt, inner)
        if found.format is None:
            return Detection(fmt, f"app inside {WRAPPER_NAMES[fmt]}",
                             f"{given_as}; {found.label}: {found.why}; read as app, as the "
                             "service reads container logs", inner=APP)
        return Detection(fmt, found.label, f"{given_as}; inside: {inner.why}", inner=found.inner)
    if wrapper is not None:
        return Detection(wrapper, f"{_FORCED_LABELS[fmt]} inside {WRAPPER_NAMES[wrapper]}",
                         given_as, inner=fmt)
    return Detection(fmt, _FORCED_LABELS[fmt], given_as)

