"""Launchers for the real backends of the demo stack and the end-to-end tests.

- `start_jaeger`: Jaeger v2 (in-memory storage) from `otel/jaeger/config.yaml`;
- `start_collector`: the audit-guard OpenTelemetry Collector from
  `collector-config/audit-guard.yaml`;
- `JaegerClient`: reads traces back through Jaeger's HTTP query API.

Every port is a free loopback port picked at start and handed to the program through the env vars
that the YAML files read (`${env:NAME:-default}`), so the files users copy are exactly the files
tested here.

Jaeger's legacy JSON (`/api/traces/{id}`, `/api/traces?service=…`) looks like:

    {"data": [{"traceID": "<32 hex>",
               "spans": [{"traceID", "spanID": "<16 hex>", "operationName", "flags",
                          "references": [{"refType": "CHILD_OF", "traceID", "spanID"}],
                          "startTime": <µs>, "duration": <µs>,
                          "tags": [{"key", "type": "string|bool|int64|float64|binary",
                                    "value"}],
                          "logs": [{"timestamp": <µs>, "fields": [<tag>…]}],
                          "processID": "p1", "warnings": null}],
               "processes": {"p1": {"serviceName", "tags": [<tag>…]}},
               "warnings": null}],
     "total": 0, "limit": 0, "offset": 0, "errors": null}

Span kind and status are tags there (`span.kind`, `otel.status_code`, `error`), resource
attributes are the process tags.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.procs import (
    ManagedProcess,
    free_port,
    http_ok,
    port_open,
    repo_root,
    tool_path,
)

__all__ = [
    "COLLECTOR_FEATURE_GATES",
    "CollectorEndpoints",
    "JaegerClient",
    "JaegerPorts",
    "collector_config_path",
    "jaeger_config_path",
    "span_tags",
    "start_collector",
    "start_jaeger",
]

COLLECTOR_BIN = "otelcol-audit-guard"
# Part of the shipped config's guarantees (see its header): file_log hands each line to the
# persistent queue before saving its offset. Feature gates exist on the command line only.
COLLECTOR_FEATURE_GATES = ("stanza.synchronousLogEmitter",)
JAEGER_BIN = "jaeger"


def collector_config_path() -> Path:
    return repo_root() / "collector-config" / "audit-guard.yaml"


def jaeger_config_path() -> Path:
    return repo_root() / "otel" / "jaeger" / "config.yaml"


# --------------------------------------------------------------------------------------- Jaeger


@dataclass(frozen=True)
class JaegerPorts:
    otlp_grpc: int
    query_http: int
    query_grpc: int
    metrics: int

    @property
    def otlp_endpoint(self) -> str:
        """host:port of the OTLP gRPC receiver (no scheme), e.g. for the collector's exporter."""
        return f"127.0.0.1:{self.otlp_grpc}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_http}"

    def env(self) -> dict[str, str]:
        """The env vars `otel/jaeger/config.yaml` reads."""
        return {
            "JAEGER_OTLP_GRPC": f"127.0.0.1:{self.otlp_grpc}",
            "JAEGER_QUERY_HTTP": f"127.0.0.1:{self.query_http}",
            "JAEGER_QUERY_GRPC": f"127.0.0.1:{self.query_grpc}",
            "JAEGER_METRICS_HOST": "127.0.0.1",
            "JAEGER_METRICS_PORT": str(self.metrics),
        }


def start_jaeger(
    workdir: Path, *, config: Path | None = None, timeout: float = 60
) -> tuple[ManagedProcess, JaegerPorts]:
    """Start Jaeger v2 on free loopback ports; return once the query API and OTLP port answer.

    The caller owns the process: always `stop()` it (e.g. in a fixture's `finally`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ports = JaegerPorts(
        otlp_grpc=free_port(), query_http=free_port(), query_grpc=free_port(), metrics=free_port()
    )
    proc = ManagedProcess(
        "jaeger",
        [tool_path(JAEGER_BIN), "--config", config or jaeger_config_path()],
        log_dir=workdir,
        env=ports.env(),
        cwd=workdir,
    )
    proc.start()
    try:
        # Extensions (query API) start before the receivers, so wait for the OTLP port as well.
        proc.wait_ready(
            lambda: http_ok(f"{ports.query_url}/api/services") and port_open(ports.otlp_grpc),
            timeout=timeout,
        )
    except BaseException:
        proc.stop()
        raise
    return proc, ports


# ------------------------------------------------------------------------------------ Collector


@dataclass(frozen=True)
class CollectorEndpoints:
    egress_port: int
    health_port: int
    metrics_port: int
    storage_dir: Path
    access_log: Path
    processor_endpoint: str
    traces_endpoint: str
    vts_target: str
    # The app audit log and the container-log glob; None → a path under storage_dir that
    # matches nothing, so a test or demo never reads this machine's real /var/log files.
    app_log: Path | None = None
    container_logs: str | None = None
    pg_log: Path | None = None
    nginx_error_log: Path | None = None

    @property
    def egress(self) -> str:
        """host:port of the `otlp/egress` OTLP gRPC receiver (point the processor here)."""
        return f"127.0.0.1:{self.egress_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def env(self) -> dict[str, str]:
        """The env vars `collector-config/audit-guard.yaml` reads."""
        return {
            "NGINX_ACCESS_LOG": str(self.access_log),
            "APP_AUDIT_LOG": str(self.app_log or self.storage_dir / "no-app-audit.json.log"),
            "CONTAINER_LOGS": self.container_logs
            or str(self.storage_dir / "no-containers" / "*" / "*-json.log"),
            "PG_AUDIT_LOG": str(self.pg_log or self.storage_dir / "no-postgresql.log"),
            "NGINX_ERROR_LOG": str(self.nginx_error_log or self.storage_dir / "no-error.log"),
            "NGINX_VTS_TARGET": self.vts_target,
            "AUDIT_GUARD_PROCESSOR_ENDPOINT": self.processor_endpoint,
            "AUDIT_GUARD_EGRESS_ENDPOINT": self.egress,
            "AUDIT_GUARD_TRACES_ENDPOINT": self.traces_endpoint,
            "AUDIT_GUARD_STORAGE_DIR": str(self.storage_dir),
            "AUDIT_GUARD_COLLECTOR_HEALTH": f"127.0.0.1:{self.health_port}",
            "AUDIT_GUARD_COLLECTOR_METRICS_HOST": "127.0.0.1",
            "AUDIT_GUARD_COLLECTOR_METRICS_PORT": str(self.metrics_port),
        }


def start_collector(
    workdir: Path,
    *,
    access_log: Path,
    processor_endpoint: str,
    traces_endpoint: str,
    vts_target: str,
    config: Path | None = None,
    storage_dir: Path | None = None,
    app_log: Path | None = None,
    container_logs: str | None = None,
    pg_log: Path | None = None,
    nginx_error_log: Path | None = None,
    feature_gates: Sequence[str] = COLLECTOR_FEATURE_GATES,
    timeout: float = 60,
    overlays: Sequence[Path] = (),
    extra_env: Mapping[str, str] | None = None,
) -> tuple[ManagedProcess, CollectorEndpoints]:
    """Start the audit-guard collector; return once health_check answers 200.

    Endpoints are `host:port` without scheme. The storage dir (offsets, persistent queues)
    defaults to `workdir/collector-storage`; pass the same one again to test restarts.
    A `vts_target` that serves nothing is fine: a failed scrape does not stop the collector.
    `app_log` (APP_AUDIT_LOG), `container_logs` (CONTAINER_LOGS, a glob) and `pg_log`
    (PG_AUDIT_LOG) default to paths in `workdir` that do not exist. `feature_gates`: the
    ones the shipped config needs; a test may pass others (or none) to show why. `overlays`:
    more config files merged over it in order (e.g. the secure variant), with `extra_env`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    endpoints = CollectorEndpoints(
        egress_port=free_port(),
        health_port=free_port(),
        metrics_port=free_port(),
        storage_dir=storage_dir or workdir / "collector-storage",
        access_log=access_log,
        processor_endpoint=processor_endpoint,
        traces_endpoint=traces_endpoint,
        vts_target=vts_target,
        app_log=app_log or workdir / "app-audit.json.log",
        container_logs=container_logs or str(workdir / "containers" / "*" / "*-json.log"),
        pg_log=pg_log or workdir / "postgresql.log",
        nginx_error_log=nginx_error_log or workdir / "nginx-error.log",
    )
    configs = [config or collector_config_path(), *overlays]
    proc = ManagedProcess(
        "collector",
        [tool_path(COLLECTOR_BIN), *[a for c in configs for a in ("--config", str(c))],
         *([f"--feature-gates={','.join(feature_gates)}"] if feature_gates else [])],
        log_dir=workdir, env={**endpoints.env(), **(extra_env or {})}, cwd=workdir)
    proc.start()
    try:
        proc.wait_ready(
            lambda: http_ok(endpoints.health_url) and port_open(endpoints.egress_port),
            timeout=timeout,
        )
    except BaseException:
        proc.stop()
        raise
    return proc, endpoints


# ------------------------------------------------------------------------------- Jaeger client


def span_tags(span: Mapping[str, Any]) -> dict[str, Any]:
    """A Jaeger JSON span's (or process's) `tags` list as a {key: value} dict."""
    return {t["key"]: t.get("value") for t in span.get("tags") or []}


class JaegerClient:
    """Jaeger v2 query API over HTTP (stdlib only)."""

    def __init__(self, base_url: str, timeout: float = 5) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any | None:
        """GET JSON; None on 404 (Jaeger's answer for "no such trace" / "nothing matched")."""
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            body = exc.read().decode(errors="replace")[:500]
            raise RuntimeError(f"GET {url} → HTTP {exc.code}: {body}") from None

    def services(self) -> list[str]:
        body = self._get("/api/services")
        return list((body or {}).get("data") or [])

    def trace(self, trace_id_hex: str) -> dict[str, Any] | None:
        """One trace in Jaeger's legacy JSON (`traceID`, `spans`, `processes`), None if unknown."""
        body = self._get(f"/api/traces/{trace_id_hex.lower()}")
        if not body or not body.get("data"):
            return None
        trace: dict[str, Any] = body["data"][0]
        return trace

    def find_traces(
        self,
        service: str,
        tags: Mapping[str, str] | None = None,
        lookback_s: float = 3600,
        limit: int = 100,
        operation: str | None = None,
    ) -> list[dict[str, Any]]:
        """Legacy search `/api/traces?service=&tags=&start=&end=&limit=` (filters by tags)."""
        now_us = int(time.time() * 1_000_000)
        params: dict[str, str | int] = {
            "service": service,
            "start": now_us - int(lookback_s * 1_000_000),
            "end": now_us + 60_000_000,  # a little slack for clock skew of span timestamps
            "limit": limit,
        }
        if tags:
            params["tags"] = json.dumps(dict(tags), separators=(",", ":"))
        if operation:
            params["operation"] = operation
        body = self._get("/api/traces", params)
        return list((body or {}).get("data") or [])

    def find_traces_v3(
        self, service: str, lookback_s: float = 3600, num_traces: int = 100
    ) -> dict[str, Any] | None:
        """`/api/v3/traces` (OTLP JSON `{"result": {"resourceSpans": …}}`); None when no match.

        No attribute filters in v3 at this release; use `find_traces` for those.
        """
        now = time.time()

        def rfc3339(t: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"

        body = self._get(
            "/api/v3/traces",
            {
                "query.service_name": service,
                "query.start_time_min": rfc3339(now - lookback_s),
                "query.start_time_max": rfc3339(now + 60),
                "query.num_traces": num_traces,
            },
        )
        return body if isinstance(body, dict) else None

    @staticmethod
    def spans_of(trace: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Copies of a trace's spans, each with its process under `process` (serviceName, tags)."""
        processes: Mapping[str, Any] = trace.get("processes") or {}
        return [
            {**span, "process": processes.get(span.get("processID", ""), {})}
            for span in trace.get("spans") or []
        ]

    def wait_for_spans(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 30,
        *,
        service: str | None = None,
        trace_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        min_count: int = 1,
        lookback_s: float = 3600,
        limit: int = 1000,
        interval: float = 0.5,
    ) -> list[dict[str, Any]]:
        """Poll until at least `min_count` spans satisfy `predicate`; return those spans.

        Spans come from `trace(trace_id)` when `trace_id` is given, else from
        `find_traces(service, tags, …)`; each span carries its `process` (see `spans_of`).
        Raises TimeoutError with what was seen when the deadline passes.
        """
        if trace_id is None and service is None:
            raise ValueError("wait_for_spans needs a service or a trace_id")
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            if trace_id is not None:
                found = self.trace(trace_id)
                traces = [found] if found else []
            else:
                assert service is not None
                traces = self.find_traces(service, tags, lookback_s=lookback_s, limit=limit)
            spans = [s for t in traces for s in self.spans_of(t)]
            seen = len(spans)
            matching = [s for s in spans if predicate(s)]
            if len(matching) >= min_count:
                return matching
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {min_count} matching span(s) "
                    f"in Jaeger ({len(matching)} matched of {seen} seen)"
                )
            time.sleep(interval)
