"""Nginx checks: does the access/error log of the audited locations hold what an audit needs?

Settings are resolved the way nginx inherits them (http → server → location): access_log and
proxy_set_header at a level REPLACE the outer ones when the level has any, proxy_buffering is the
innermost value. Findings about one directive are reported once, however many locations use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..grammar.sizes import NGINX_SIZE
from .findings import Evidence, Finding, Level
from .nginx_conf import Directive, load_dump, load_file

__all__ = ["AUDITED_PREFIXES", "check_nginx", "check_tree"]

SUB = "nginx"
# Dify's service API, console API and web-app API: the requests an audit must account for.
AUDITED_PREFIXES = ("/v1/", "/console/api/", "/api/")
COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')
REQUIRED_VARS = ("request_id", "request_completion", "body_bytes_sent", "upstream_response_length")
# Identity has no standard variable: accept anything that names a user or app id.
IDENTITY = re.compile(r"\$\w*(user_id|app_id|audit_user|x_user)\w*")
ERROR_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


@dataclass
class _Ctx:
    access_logs: list[Directive] = field(default_factory=list)
    headers: list[Directive] = field(default_factory=list)
    buffering: Directive | None = None
    buffer_size: Directive | None = None  # proxy_buffer_size: holds the response header


def _ev(d: Directive) -> Evidence:
    return Evidence(d.file, d.line, d.value())


def _audited(loc: Directive) -> bool:
    args = loc.args
    if not args:
        return False
    mod, path = (args[0], args[1]) if len(args) > 1 else ("", args[0])
    if mod in ("~", "~*"):
        flags = re.IGNORECASE if mod == "~*" else 0
        try:
            return any(re.search(path, p + "x", flags) for p in AUDITED_PREFIXES)
        except re.error:  # PCRE syntax Python lacks: better a false "audited" than a miss
            return True
    if mod == "=":
        return any(path.startswith(p) for p in AUDITED_PREFIXES)
    # Prefix match: "/" or "/console" covers the audited paths; "/v1" or "/v1/chat" lies inside.
    return any(p.startswith(path) or path.startswith(p.rstrip("/")) for p in AUDITED_PREFIXES)


def _level(ctx: _Ctx, block: list[Directive]) -> _Ctx:
    own_logs = [d for d in block if d.name == "access_log"]
    own_headers = [d for d in block if d.name == "proxy_set_header"]
    buffering = [d for d in block if d.name == "proxy_buffering"]
    buffer_size = [d for d in block if d.name == "proxy_buffer_size"]
    return _Ctx(
        access_logs=own_logs or ctx.access_logs,
        headers=own_headers or ctx.headers,
        buffering=buffering[-1] if buffering else ctx.buffering,
        buffer_size=buffer_size[-1] if buffer_size else ctx.buffer_size,
    )


def _walk(block: list[Directive], ctx: _Ctx, out: list[tuple[Directive, _Ctx]]) -> None:
    for d in block:
        if d.block is None or d.name not in ("http", "server", "location"):
            continue
        inner = _level(ctx, d.block)
        if d.name == "location" and _audited(d) and any(x.name == "proxy_pass" for x in d.block):
            out.append((d, inner))
        _walk(d.block, inner, out)


def _all(tree: list[Directive], name: str) -> list[Directive]:
    found: list[Directive] = []
    for d in tree:
        if d.name == name:
            found.append(d)
        if d.block:
            found.extend(_all(d.block, name))
    return found


def _format_text(fmt: Directive) -> tuple[str, str]:
    """(escape mode, concatenated format string) of a log_format directive."""
    parts = fmt.args[1:]
    escape = "default"
    if parts and parts[0].startswith("escape="):
        escape, parts = parts[0].split("=", 1)[1], parts[1:]
    return escape, "".join(parts)


def _log_format(log: Directive, formats: dict[str, Directive]) -> tuple[str, Directive | None]:
    """(format name, its log_format; None for the built-in `combined`) of an access_log."""
    name = log.args[1] if len(log.args) > 1 and "=" not in log.args[1] else "combined"
    return name, formats.get(name)


def _access_log_findings(log: Directive | None, formats: dict[str, Directive]) -> list[Finding]:
    if log is None or log.args == ["off"]:
        ev = _ev(log) if log else Evidence(None, None, "no access_log: logs/access.log combined")
        return [Finding("nginx.access_log_fields", SUB, Level.FAIL,
                        "audited location writes no usable access log", ev,
                        "Without an access line per request there is nothing to audit; the "
                        "default `combined` format lacks request id, completion and identity.",
                        "Include otel/nginx/audit_log_format.conf in http{} and set "
                        "`access_log /var/log/nginx/audit.json.log audit_json;`.")]
    name, fmt = _log_format(log, formats)
    escape, text = _format_text(fmt) if fmt else ("default", COMBINED)
    found: list[Finding] = []
    missing = [v for v in REQUIRED_VARS if not re.search(rf"\${v}\b", text)]
    if not IDENTITY.search(text):
        missing.append("identity (user id / app id)")
    where = _ev(fmt) if fmt else _ev(log)
    if missing:
        found.append(Finding(
            "nginx.access_log_fields", SUB, Level.FAIL,
            f"log_format {name} lacks {', '.join(missing)}", where,
            "request_id joins the access line to the app and DB lines; request_completion and "
            "body_bytes_sent vs upstream_response_length reveal aborted and cut responses; "
            "without identity a line cannot say WHO did it.",
            "Use the audit_json format from otel/nginx/audit_log_format.conf.",
        ))
    else:
        found.append(Finding("nginx.access_log_fields", SUB, Level.OK,
                             f"log_format {name} has the audit fields", where))
    if text.lstrip().startswith("{") and escape != "json":
        found.append(Finding(
            "nginx.log_escape", SUB, Level.FAIL,
            f"log_format {name} looks like JSON but has no escape=json", where,
            "A quote or backslash in a URI or user agent is written as \\x22 / \\x5C, which is "
            "not valid JSON: that request's line cannot be parsed and its record is lost.",
            f"Add escape=json: `log_format {name} escape=json '...';`.",
        ))
    opts = {a.split("=", 1)[0] for a in log.args[2:] if "=" in a}
    if "buffer" in opts and "flush" not in opts:
        found.append(Finding(
            "nginx.access_log_buffer", SUB, Level.WARN,
            "access_log is buffered without flush=", _ev(log),
            "Lines wait in worker memory until the buffer fills; a quiet server holds them for "
            "long, and a crashed or killed worker loses them: requests that never happened.",
            "Drop buffer= (write unbuffered), or at least add flush=1s.",
        ))
    return found


MIN_HEADER_BUFFER = 4096  # nginx's default on x86-64 (one page): apps' headers fit in it


def _buffer_size_finding(loc: Directive, d: Directive) -> Finding:
    """proxy_buffer_size holds the upstream's response header: a header that does not fit is
    `upstream sent too big header` and a 502 — after the app already did (and audited) it."""
    size = NGINX_SIZE.parse(d.args[0]) if d.args else None
    where = f"location {' '.join(loc.args)}"
    if size is None or size >= MIN_HEADER_BUFFER:
        return Finding("nginx.proxy_buffer_size", SUB, Level.OK,
                       f"proxy_buffer_size {d.args[0] if d.args else '?'} for {where}", _ev(d))
    return Finding(
        "nginx.proxy_buffer_size", SUB, Level.WARN,
        f"proxy_buffer_size {d.args[0]} for {where} is below {MIN_HEADER_BUFFER // 1024}k", _ev(d),
        "A response header larger than this (big cookies, tokens) makes nginx answer 502 "
        "`upstream sent too big header` although the app handled the request: the app's audit "
        "record says it happened, the access log says it failed.",
        "Raise it: `proxy_buffer_size 8k;` (or more for large tokens), keep error_log at info "
        "to see the event.",
    )


def _buffering_finding(
    loc: Directive, ctx: _Ctx, formats: dict[str, Directive], error_log_at_info: bool
) -> Finding:
    """Streaming (proxy_buffering off) hides cut responses from the access log; it is covered
    when the error log is at info and the access log records $connection, so audit-guard can
    join the error line that shows the cut to its request."""
    assert ctx.buffering is not None
    where = f"location {' '.join(loc.args)}"
    fmts = [_log_format(log, formats)[1] for log in ctx.access_logs]
    texts = [_format_text(fmt)[1] for fmt in fmts if fmt is not None]
    logs_connection = bool(texts) and all("$connection" in t for t in texts)
    if error_log_at_info and logs_connection:
        return Finding(
            "nginx.proxy_buffering", SUB, Level.OK,
            f"proxy_buffering off for {where}, covered: error_log at info and $connection "
            "logged (cut streams are joined from the error log)", _ev(ctx.buffering))
    missing = [x for x, ok in (("error_log at info", error_log_at_info),
                               ("$connection in the access log", logs_connection)) if not ok]
    return Finding(
        "nginx.proxy_buffering", SUB, Level.WARN,
        f"proxy_buffering off for {where} without {' and '.join(missing)}", _ev(ctx.buffering),
        "Unbuffered (streaming) responses are where an upstream that closes early still gets "
        "`200` in the access log; only the error log says the stream was cut, and only "
        "$connection ties that line to the request.",
        "Keep it if the app streams (SSE), but set `error_log … info` and log $connection "
        "(otel/nginx/audit_log_format.conf does): audit-guard then flags the cut requests.",
    )


def check_tree(tree: list[Directive], source: str) -> list[Finding]:
    formats = {d.args[0]: d for d in _all(tree, "log_format") if d.args}
    locations: list[tuple[Directive, _Ctx]] = []
    _walk(tree, _level(_Ctx(), tree), locations)
    found: list[Finding] = []
    if not locations:
        found.append(Finding(
            "nginx.audited_locations", SUB, Level.WARN,
            "no location proxies /v1/, /console/api/ or /api/", Evidence(source),
            "The other checks look at the locations that serve the audited API; none was found, "
            "so nothing about the audit trail could be verified.",
            "Point --nginx-conf at the config that fronts the app (or pass `nginx -T` output).",
        ))
    error_log = _error_log(tree, source)
    for loc, ctx in locations:
        if ctx.buffering is not None and ctx.buffering.args[:1] == ["off"]:
            found.append(_buffering_finding(loc, ctx, formats, error_log.level is Level.OK))
        if ctx.buffer_size is not None:
            found.append(_buffer_size_finding(loc, ctx.buffer_size))
        logs = ctx.access_logs or [None]
        for log in logs:
            found.extend(_access_log_findings(log, formats))
        names = {h.args[0].lower() for h in ctx.headers if h.args}
        if names & {"x-request-id", "traceparent"}:
            found.append(Finding("nginx.request_id_upstream", SUB, Level.OK,
                                 "request id is sent upstream", _ev(loc)))
        else:
            found.append(Finding(
                "nginx.request_id_upstream", SUB, Level.WARN,
                f"location {' '.join(loc.args)} sends no X-Request-ID / traceparent upstream",
                _ev(loc),
                "The app cannot log nginx's $request_id, so its audit lines cannot be joined to "
                "the access line of the same request.",
                "Include otel/nginx/audit_location.conf in the location (and repeat the other "
                "proxy_set_header lines there: inheritance stops at the first one).",
            ))
    found.append(error_log)
    status = _all(tree, "stub_status") + _all(tree, "vhost_traffic_status_display")
    if status:
        found.append(Finding("nginx.status_endpoint", SUB, Level.OK,
                             "request counter endpoint configured", _ev(status[0])))
    else:
        found.append(Finding(
            "nginx.status_endpoint", SUB, Level.WARN,
            "no stub_status or vhost_traffic_status endpoint", Evidence(source),
            "Counters kept by nginx itself are the only independent count to reconcile the "
            "access log against: without them a missing line leaves no trace.",
            "Add a `location = /stub_status { stub_status; }` on an internal port (or VTS).",
        ))
    return _dedupe(found)


def _error_log(tree: list[Directive], source: str) -> Finding:
    logs = _all(tree, "error_log")

    def rank(d: Directive) -> int:
        lvl = d.args[1] if len(d.args) > 1 else "error"
        return ERROR_LEVELS.index(lvl) if lvl in ERROR_LEVELS else len(ERROR_LEVELS)

    best = min(logs, key=rank, default=None)
    if best is not None and rank(best) <= ERROR_LEVELS.index("info"):
        return Finding("nginx.error_log_level", SUB, Level.OK, "error_log at info", _ev(best))
    ev = _ev(best) if best else Evidence(source, None, "no error_log: default level error")
    return Finding(
        "nginx.error_log_level", SUB, Level.WARN, "error_log level above info", ev,
        "`client prematurely closed connection` is logged at info only: client aborts are "
        "invisible, and an aborted download looks like a normal 200.",
        "Set `error_log /var/log/nginx/audit.error.log info;` and collect that file.",
    )


def _dedupe(found: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, Evidence, Level]] = set()
    out = []
    for f in found:
        key = (f.check, f.evidence, f.level)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def check_nginx(conf: Path | None = None, dump: Path | None = None) -> list[Finding]:
    """Raises NginxConfigError when the input cannot be read or parsed."""
    if dump is not None:
        return check_tree(load_dump(dump), str(dump))
    assert conf is not None
    return check_tree(load_file(conf), str(conf))
