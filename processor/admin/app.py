"""The admin HTTP API and status page, served on `admin.listen` next to /metrics.

Read-only endpoints need no credentials (the port is meant for loopback or a trusted network,
like /metrics). The one mutating endpoint, PUT /api/rules, needs `Authorization: Bearer
<admin.token>`; without a configured token it is disabled outright, so a default install cannot
have its audit rules replaced by anyone who reaches the port. Every error is JSON
`{"error": "...", "details": [...]}` worded for an operator.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..rules import RuleError, RuleRegistry, RuleSet
from .models import (
    RULE_LIST,
    DeadLetterOut,
    ErrorBody,
    FlagOut,
    FlagsOut,
    ReadyOut,
    RecordIn,
    RuleIn,
    RuleOut,
    RulesOut,
    RulesReplaced,
    RuleTestIn,
    RuleTestOut,
    SourceOut,
    StatusOut,
)
from .page import render_page
from .state import AdminState, SourceStatus

__all__ = [
    "MAX_RULES_BODY", "AdminError", "DeadLetterOut", "ErrorBody", "FlagOut", "FlagsOut",
    "ReadyOut", "RecordIn", "RuleIn", "RuleOut", "RuleTestIn", "RuleTestOut", "RulesOut",
    "RulesReplaced", "SourceOut", "StatusOut", "create_app", "health_of",
]

log = logging.getLogger(__name__)

MAX_RULES_BODY = 1024 * 1024  # a rule set is a few KiB; refuse anything absurd before parsing
_RECENT_S = 60  # "records in the last minute": green; a flag within it: amber
_QUIET_S = 300  # no records for longer: red
_MIN_COMPLETENESS = 0.99
# What generate_latest() writes; prometheus_client's CONTENT_TYPE_LATEST names a newer version.
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml",
               "text/plain")
# Module level: FastAPI resolves the (string) annotations of dependencies in module globals.
_BEARER = HTTPBearer(auto_error=False, description="admin.token (AUDIT_GUARD_ADMIN__TOKEN)")


def _utf8(text: str) -> str:
    """Messages quote what the client sent, which JSON may carry as a lone surrogate (\\ud800):
    written as an escape, not an encoding error (a 500)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class AdminError(Exception):
    """An error answered as JSON {"error", "details"} with the given status."""

    def __init__(self, status: int, error: str, details: list[str] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.details = status, error, details or []
        self.headers = dict(headers or {})


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "bad request", 401: "missing or wrong bearer token",
            403: "mutations disabled: admin.token is not set", 413: "body too large",
            415: "unsupported content type", 422: "invalid request or rule set",
            503: "not ready"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


# -- health ---------------------------------------------------------------------------------------


def health_of(status: SourceStatus, now_ns: int, lag_threshold_s: float) -> tuple[str, str]:
    """(green|amber|red, why) for one source — the status page's colours."""
    since = (now_ns - status.last_seen_unix_nano) / 1e9 if status.last_seen_unix_nano else None
    if status.silent:
        return "red", "silent while traffic continues"
    if status.completeness is not None and status.completeness < _MIN_COMPLETENESS:
        return "red", f"completeness {status.completeness:.2%} < {_MIN_COMPLETENESS:.0%}"
    if since is None or since > _QUIET_S:
        return "red", f"no records for more than {_QUIET_S // 60} min"
    flagged_recently = (status.last_flag_unix_nano is not None
                        and (now_ns - status.last_flag_unix_nano) / 1e9 <= _RECENT_S)
    if flagged_recently:
        return "amber", "flagged records in the last minute"
    if status.last_lag_s is not None and status.last_lag_s > lag_threshold_s:
        return "amber", f"ingest lag {status.last_lag_s:.1f} s > {lag_threshold_s:g} s"
    if since > _RECENT_S:
        return "amber", "no records in the last minute"
    return "green", "records flowing, nothing flagged"


# -- the app --------------------------------------------------------------------------------------


def _ready_out(state: AdminState) -> ReadyOut:
    r = state.readiness()
    return ReadyOut(ready=r.ready, reason=r.reason, receiver_started=r.receiver_started,
                    last_export_ok_unix_nano=r.last_export_ok_unix_nano,
                    last_export_failed_unix_nano=r.last_export_failed_unix_nano,
                    error=None if r.ready else r.reason)


def _deadletter_out(state: AdminState) -> DeadLetterOut | None:
    d = state.deadletter()
    if d is None:
        return None
    return DeadLetterOut(directory=str(d.directory), entries=d.entries, spans=d.spans,
                         bytes=d.bytes, max_bytes=d.max_bytes, oldest_unix_nano=d.oldest_unix_nano,
                         reasons=dict(d.reasons), corrupt_files=d.corrupt_files)


def _since_ns(since: float | None) -> int | None:
    if since is None:
        return None
    # Clamped: a huge `since` simply matches nothing instead of overflowing.
    return int(min(max(since, 0.0), 1e11) * 1e9)


def _check_schema(data: list[Any], source: str) -> None:
    """The documented schema (RuleIn) on top of the loader's checks: it is stricter in a few
    corners (`labels: null`, non-string descriptions) and the API must accept what it says."""
    try:
        RULE_LIST.validate_python(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            where = f"rule #{int(loc[0]) + 1}" if loc and isinstance(loc[0], int) else "body"
            key = ".".join(str(p) for p in loc[1:]) or "(rule)"
            problems.append(f"{where} (file {source}): {key}: {err.get('msg', '')}")
        raise RuleError(problems) from None


def _compile_yaml_rules(text: str, source: str) -> RuleSet:
    """Compiled by the same loader as a rules file (same checks, same messages with rule #
    positions and YAML line/column), then held to the documented schema."""
    new_set = RuleSet.from_yaml(text, source)
    _check_schema(yaml.safe_load(text), source)  # parsed fine just above: a list
    return new_set


def _compile_json_rules(data: Any, source: str) -> RuleSet:
    """A JSON list of rules, dumped as YAML (which keeps the order, so the rule #positions) and
    compiled like a YAML body."""
    if not isinstance(data, list):
        raise RuleError([f"file {source}: expected a JSON list of rules, got "
                         f"{type(data).__name__}"])
    try:
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, RecursionError) as exc:
        raise RuleError([f"file {source}: cannot read the rules: {exc}"]) from None
    return _compile_yaml_rules(text, source)


def _allowed_methods(request: Request) -> list[str]:
    """Every method any route serves on this path. Starlette's own 405 lists only the first
    matching route's methods (GET and PUT /api/rules are two routes), so `Allow` would lie."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)  # PARTIAL: the path matches, not the method
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def create_app(
    state: AdminState,
    rules: RuleRegistry,
    *,
    token: str | None = None,
    rules_files: list[Path] | None = None,
    include_builtin: bool = True,
    registry: CollectorRegistry = REGISTRY,
    lag_threshold_s: float = 5.0,
) -> FastAPI:
    """The admin app. `registry` is what /metrics serves (the default registry, which the
    OpenTelemetry PrometheusMetricReader registers into); `rules_files`/`include_builtin` are
    the configured rule sources, shown by GET /api/rules."""
    files = [str(p) for p in rules_files or ()]
    app = FastAPI(
        title="audit-guard admin API",
        version="1",
        description="Health, self-metrics, recent flagged audit records, per-source status and "
                    "the audit rules of a running `audit-guard serve`.",
    )

    # -- errors: always JSON -----------------------------------------------------------------
    @app.exception_handler(AdminError)
    async def _admin_error(_: Request, exc: AdminError) -> JSONResponse:
        return JSONResponse({"error": _utf8(exc.error), "details": list(map(_utf8, exc.details))},
                            exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.url.path} (see /docs)",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
                       exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse({"error": _utf8(message), "details": []}, exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Messages only: echoing the input back could fail on undecodable bytes and adds noise.
        details = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
                   for err in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": details}, 422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("admin API: unexpected error")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "details": []},
                            500)

    def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        if token is None:
            raise AdminError(403, "changing the rules over the API is disabled: set admin.token "
                                  "to enable it (env AUDIT_GUARD_ADMIN__TOKEN)")
        challenge = {"WWW-Authenticate": 'Bearer realm="audit-guard"'}
        if creds is None:
            raise AdminError(401, "missing `Authorization: Bearer <admin.token>`",
                             headers=challenge)
        if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise AdminError(401, "wrong bearer token",
                             headers={**challenge, "WWW-Authenticate":
                                      'Bearer realm="audit-guard", error="invalid_token"'})

    # -- views shared by the JSON API and the page -------------------------------------------
    def status_view() -> StatusOut:
        now = state.now_ns()
        sources = []
        for name, s in state.sources().items():
            health, why = health_of(s, now, lag_threshold_s)
            sources.append(SourceOut(
                name=name, records_total=s.records_total, flagged_total=s.flagged_total,
                last_seen_unix_nano=s.last_seen_unix_nano,
                seconds_since_last_seen=(now - s.last_seen_unix_nano) / 1e9
                if s.last_seen_unix_nano else None,
                last_flag_unix_nano=s.last_flag_unix_nano, last_lag_s=s.last_lag_s,
                avg_lag_s=s.avg_lag_s, completeness=s.completeness, silent=s.silent,
                health=health, health_reason=why))  # type: ignore[arg-type]
        return StatusOut(now_unix_nano=now, lag_threshold_s=lag_threshold_s,
                         ready=_ready_out(state), sources=sources,
                         deadletter=_deadletter_out(state))

    def rules_view() -> RulesOut:
        counts, errors = rules.counts, rules.errors
        matches: dict[str, int] = {}
        for (name, _severity), n in counts.items():
            matches[name] = matches.get(name, 0) + n
        return RulesOut(
            rules=[RuleOut(name=r.name, description=r.description, when=r.when,
                           severity=r.severity, labels=dict(r.labels), source=r.source,
                           index=r.index, matches=matches.get(r.name, 0),
                           errors=errors.get(r.name, 0))
                   for r in rules.current],
            rules_files=files, builtin_rules=include_builtin)

    def flags_view(limit: int, **filters: Any) -> FlagsOut:
        found = state.flags(limit=limit, **filters)
        return FlagsOut(flags=[FlagOut(**f) for f in found], buffer_size=state.flags_buffer)

    # -- endpoints ---------------------------------------------------------------------------
    @app.get("/healthz", summary="Liveness", tags=["health"],
             description="200 while the process runs.")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness", tags=["health"], response_model=ReadyOut,
             responses={503: {"model": ReadyOut, "description": "not ready; `reason` says why"}},
             description="503 when the OTLP receiver is not started, or when the last hand-off "
                         "of spans downstream failed and none succeeded since.")
    def readyz() -> Any:
        out = _ready_out(state)
        return out if out.ready else JSONResponse(out.model_dump(), 503)

    @app.get("/metrics", summary="Prometheus self-metrics", tags=["health"],
             response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format 0.0.4"}},
             description="audit-guard's own metrics (docs/metrics.md).")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=_METRICS_TYPE)

    @app.get("/api/rules", summary="The active audit rules", tags=["rules"],
             response_model=RulesOut,
             description="Every active rule with its source file and match/error counts.")
    def get_rules() -> RulesOut:
        return rules_view()

    @app.put(
        "/api/rules", summary="Replace the active audit rules", tags=["rules"],
        response_model=RulesReplaced, dependencies=[Depends(require_token)],
        responses=_errors(401, 403, 413, 415, 422),
        description=(
            "Body: a YAML rule list (`application/yaml` or `text/plain`) or a JSON list of "
            "rules. The set is compiled as a whole: with any error nothing changes and the "
            "answer is 422 naming each rule and the position in its expression. On success it "
            "replaces the active set atomically. The new set lives in memory only: the next "
            "reload of the configured rule files (SIGHUP, or a file change) replaces it."),
        openapi_extra={"requestBody": {"required": True, "content": {
            # Structured, like JSON: schemathesis and other clients serialize it as YAML.
            "application/yaml": {"schema": {"type": "array",
                                            "items": {"$ref": "#/components/schemas/RuleIn"}}},
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "array",
                                            "items": {"$ref": "#/components/schemas/RuleIn"}}},
        }}},
    )
    async def put_rules(request: Request) -> RulesReplaced:
        body = await request.body()
        if len(body) > MAX_RULES_BODY:
            raise AdminError(413, f"rule set larger than {MAX_RULES_BODY} bytes")
        media = request.headers.get("content-type", "text/plain").split(";")[0].strip().lower()
        source = "PUT /api/rules"
        try:
            if media == "application/json":
                try:
                    data = json.loads(body)
                except (ValueError, RecursionError) as exc:
                    raise AdminError(422, f"body is not valid JSON: {exc}") from None
                new_set = _compile_json_rules(data, source)
            elif media in _YAML_TYPES:
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise AdminError(422, f"body is not UTF-8: {exc}") from None
                new_set = _compile_yaml_rules(text, source)
            else:
                raise AdminError(415, f"unsupported content type {media!r}: send "
                                      "application/yaml, text/plain or application/json")
        except RuleError as exc:
            raise AdminError(422, "rule set refused; the previous set stays active",
                             exc.errors) from None
        except RecursionError:
            raise AdminError(422, "rule set refused: nested too deeply") from None
        rules.replace(new_set)
        log.info("audit rules replaced over the admin API: %d rule(s): %s",
                 len(new_set), ", ".join(new_set.names))
        return RulesReplaced(active=list(new_set.names), count=len(new_set),
                             note="in memory until the next reload of the configured rule files")

    @app.post("/api/rules/test", summary="Evaluate rules on one record", tags=["rules"],
              response_model=RuleTestOut, responses=_errors(400, 422),
              description="Evaluates `rule` (when given) or the active set on `record`. "
                          "Read-only: nothing is counted or changed, no token needed.")
    def test_rules(body: RuleTestIn) -> RuleTestOut:
        if body.rule is not None:
            try:
                rule_set = _compile_json_rules([body.rule.model_dump()], "request")
            except RuleError as exc:
                raise AdminError(422, "rule refused", exc.errors) from None
        else:
            rule_set = rules.current
        view = body.record.model_dump()
        errors: Counter[str] = Counter()
        started = time.perf_counter_ns()
        matched = rule_set.evaluate_record(view, errors)
        elapsed = (time.perf_counter_ns() - started) / 1000
        return RuleTestOut(matches=matched, evaluated=len(rule_set), errors=sorted(errors),
                           elapsed_us=elapsed, active_set=body.rule is None)

    @app.get("/api/flags", summary="Recent flagged records", tags=["status"],
             response_model=FlagsOut, responses=_errors(422),
             description="From an in-memory ring buffer of the last `admin.flags_buffer` "
                         "flagged records, newest first.")
    def get_flags(
        flag: Annotated[str | None, Query(
            description="a flag, or its prefix before ':' (`rule`, `missing_field`)")] = None,
        source: Annotated[str | None, Query(description="nginx, app, pgaudit, …")] = None,
        user: Annotated[str | None, Query(description="user_id")] = None,
        since: Annotated[float | None, Query(
            allow_inf_nan=False,
            description="only records received at or after this Unix time (seconds)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> FlagsOut:
        return flags_view(limit, flag=flag, source=source, user=user,
                          since_unix_nano=_since_ns(since))

    @app.get("/api/status", summary="Per-source status", tags=["status"],
             response_model=StatusOut,
             description="Records, last seen, ingest lag, completeness, silence and health "
                         "per source, readiness, and the dead-letter spool.")
    def get_status() -> StatusOut:
        return status_view()

    @app.get("/", summary="Status page", tags=["status"], response_class=HTMLResponse,
             description="A self-refreshing HTML page over /api/status, /api/flags, /api/rules.")
    def page() -> HTMLResponse:
        return HTMLResponse(render_page(status_view(), flags_view(20), rules_view()))

    return app
