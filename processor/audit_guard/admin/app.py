"""The admin HTTP API and status page, served on `admin.listen` next to /metrics.

Read-only endpoints need no credentials (the port is meant for loopback or a trusted network,
like /metrics). The mutating endpoints, PUT /api/rules and POST /api/membership-change
(audit_guard.admin.membership_api), need `Authorization: Bearer <admin.token>`; without a
configured token they are disabled outright, so a default install cannot have its audit rules
replaced, or its missing_record reports held back, by anyone who reaches the port. Every error
is JSON `{"error": "...", "details": [...]}` worded for an operator (audit_guard.admin.errors).

`create_app` registers the routes in groups: health (/healthz, /readyz, /metrics), the rules
(audit_guard.admin.rules_api), status (/api/flags, /api/status, the page) and the audit view of
one request (/requests/{trace_id}, /api/requests/{trace_id}); what they show is built in
audit_guard.admin.views and audit_guard.admin.evidence. The one HTML error: the audit view answers
an unknown trace with an HTML 404 page (it is followed from a link in a browser).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from ..rules import RuleRegistry
from .errors import AdminError, add_error_handlers, error_responses, token_check
from .evidence import request_view
from .integrity_api import add_integrity_routes
from .limits import BodyLimit, TrustedHostMiddleware
from .membership_api import add_membership_routes
from .models import (
    DeadLetterOut,
    ErrorBody,
    FlagOut,
    FlagsOut,
    ReadyOut,
    RecordIn,
    RequestOut,
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
from .request_page import render_missing_page, render_request_page
from .rules_api import MAX_RULES_BODY, add_rule_routes
from .state import AdminState
from .views import flags_view, health_of, ready_out, rules_view, status_view

__all__ = [
    "MAX_RULES_BODY", "AdminError", "DeadLetterOut", "ErrorBody", "FlagOut", "FlagsOut",
    "ReadyOut", "RecordIn", "RuleIn", "RuleOut", "RuleTestIn", "RuleTestOut", "RulesOut",
    "RequestOut", "RulesReplaced", "SourceOut", "StatusOut", "create_app", "health_of",
]

# What generate_latest() writes; prometheus_client's CONTENT_TYPE_LATEST names a newer version.
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _since_ns(since: float | None) -> int | None:
    if since is None:
        return None
    # Clamped: a huge `since` simply matches nothing instead of overflowing.
    return int(min(max(since, 0.0), 1e11) * 1e9)


def create_app(
    state: AdminState,
    rules: RuleRegistry,
    *,
    token: str | None = None,
    rules_files: list[Path] | None = None,
    include_builtin: bool = True,
    registry: CollectorRegistry = REGISTRY,
    lag_threshold_s: float = 5.0,
    rules_test_open: bool = False,
    read_token_required: bool = False,
    max_body_bytes: int = 1024 * 1024,
    allowed_hosts: list[str] | None = None,
    trace_url: str | None = None,
) -> FastAPI:
    """The admin app. `registry` is what /metrics serves (the default registry, which the
    OpenTelemetry PrometheusMetricReader registers into); `rules_files`/`include_builtin` are
    the configured rule sources, shown by GET /api/rules. The rest: admin.* (config.py)."""
    files = [str(p) for p in rules_files or ()]
    app = FastAPI(
        title="audit-guard admin API",
        version="1",
        description="Health, self-metrics, recent flagged audit records, per-source status and "
                    "the audit rules of a running `audit-guard serve`.",
    )
    add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])
    _add_health_routes(app, state, registry)

    def rules_out() -> RulesOut:
        return rules_view(rules, files, include_builtin)

    read = [Depends(token_check(token, "reading audit data over the API"))] \
        if read_token_required else []
    test = None if rules_test_open else token_check(token, "evaluating rules over the API")
    add_rule_routes(app, rules, rules_out, token_check(token), test, read)
    _add_status_routes(app, state, rules_out, lag_threshold_s, read, trace_url)
    _add_request_routes(app, state, rules_out, lag_threshold_s, read, trace_url)
    add_integrity_routes(app)
    add_membership_routes(app, state, token_check(token, "announcing a membership change "
                                                         "over the API"))
    return app


def _add_health_routes(app: FastAPI, state: AdminState, registry: CollectorRegistry) -> None:
    @app.get("/healthz", summary="Liveness", tags=["health"],
             description="200 while the process runs.")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness", tags=["health"], response_model=ReadyOut,
             responses={503: {"model": ReadyOut, "description": "not ready; `reason` says why"}},
             description="503 when the OTLP receiver is not started, or when the last hand-off "
                         "of spans downstream failed and none succeeded since.")
    def readyz() -> Any:
        out = ready_out(state)
        return out if out.ready else JSONResponse(out.model_dump(), 503)

    @app.get("/metrics", summary="Prometheus self-metrics", tags=["health"],
             response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format 0.0.4"}},
             description="audit-guard's own metrics (docs/metrics.md).")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=_METRICS_TYPE)


def _add_status_routes(app: FastAPI, state: AdminState, rules_out: Callable[[], RulesOut],
                       lag_threshold_s: float, read: list[Any], trace_url: str | None) -> None:
    @app.get("/api/flags", summary="Recent flagged records", tags=["status"],
             response_model=FlagsOut, responses=error_responses(401, 403, 422),
             dependencies=read,
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
        return flags_view(state, limit, flag=flag, source=source, user=user,
                          since_unix_nano=_since_ns(since))

    @app.get("/api/status", summary="Per-source status", tags=["status"],
             response_model=StatusOut, dependencies=read,
             responses=error_responses(401, 403),
             description="Records, last seen, ingest lag, completeness, silence and health "
                         "per source, readiness, and the dead-letter spool.")
    def get_status() -> StatusOut:
        return status_view(state, lag_threshold_s)

    @app.get("/", summary="Status page", tags=["status"], response_class=HTMLResponse,
             dependencies=read,
             description="A self-refreshing HTML page over /api/status, /api/flags, /api/rules.")
    def page() -> HTMLResponse:
        return HTMLResponse(render_page(status_view(state, lag_threshold_s),
                                        flags_view(state, 20), rules_out(), trace_url))


TraceId = Annotated[str, PathParam(pattern="^[0-9a-fA-F]{32}$",
                                   description="32 hex digits (nginx $request_id)")]


def _json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """error_responses for an HTML endpoint: its errors are still JSON (a `model` alone would
    be documented under the endpoint's text/html)."""
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    return {code: {"description": r["description"], "content": {"application/json":
                                                                {"schema": ref}}}
            for code, r in error_responses(*codes).items()}


def _not_kept(trace_id: str, state: AdminState) -> str:
    requests, _ = state.request_window
    return (f"request {trace_id} is not in audit-guard's recent window: only requests with a "
            f"flagged or missing record are kept, the last {requests} of them "
            "(admin.requests_kept), and nothing from before a restart. The trace backend has "
            "every span.")


def _add_request_routes(app: FastAPI, state: AdminState, rules_out: Callable[[], RulesOut],
                        lag_threshold_s: float, read: list[Any], trace_url: str | None) -> None:
    def view(trace_id: str) -> RequestOut | None:
        entries = state.request(trace_id)
        if entries is None:
            return None
        return request_view(trace_id, entries, rules_out(), trace_url=trace_url,
                            lag_threshold_s=lag_threshold_s, window=state.request_window)

    @app.get("/api/requests/{trace_id}", summary="Audit view of one request (JSON)",
             tags=["status"], response_model=RequestOut, dependencies=read,
             responses=error_responses(401, 403, 404, 422),
             description="The kept records of a request with a flagged or missing record: "
                         "nginx, app, pgaudit, error-log evidence, missing markers, and every "
                         "flag with its meaning and evidence. 404 when it is not (or no longer) "
                         "in the window (admin.requests_kept).")
    def get_request(trace_id: TraceId) -> RequestOut:
        found = view(trace_id.lower())
        if found is None:
            raise AdminError(404, _not_kept(trace_id.lower(), state))
        return found

    @app.get("/requests/{trace_id}", summary="Audit view of one request", tags=["status"],
             response_class=HTMLResponse, dependencies=read,
             responses={404: {"content": {"text/html": {"schema": {"type": "string"}}},
                              "description": "not (or no longer) in the window: an HTML page "
                                             "saying so"},
                        **_json_errors(401, 403, 422)},
             description="GET /api/requests/{trace_id} as a server-rendered HTML page.")
    def request_page(trace_id: TraceId) -> HTMLResponse:
        tid = trace_id.lower()
        found = view(tid)
        if found is None:
            return HTMLResponse(render_missing_page(tid, _not_kept(tid, state), trace_url), 404)
        return HTMLResponse(render_request_page(found))
