"""The observability files (otel/prometheus/, otel/grafana/, compose.yaml) as the static tests
read them: paths, the documented metric names, the real promtool, and PromQL / dashboard walkers.
Shared by tests/unit/deploy/test_alerting.py (alert rules) and tests/unit/deploy/test_grafana.py
(dashboard,
datasources)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from demo.procs import repo_root

REPO = repo_root()
PROM_DIR = REPO / "otel" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
GRAFANA_DIR = REPO / "otel" / "grafana"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "audit-guard.json"
COMPOSE_FILE = REPO / "compose.yaml"

# audit-guard's self-metrics, as the OpenTelemetry SDK's Prometheus exporter writes them.
AUDIT_COUNTERS = {
    "audit_records_total",
    "audit_spans_exported_total",
    "audit_records_truncated_total",
    "audit_field_violations_total",
    "audit_records_delayed_total",
    "audit_records_missing_total",
    "audit_records_late_total",
    "audit_rule_matches_total",
    "audit_reconcile_evicted_total",
    "audit_counter_scrape_errors_total",
    "audit_spans_deadlettered_total",
    "audit_state_write_errors_total",
    "audit_state_corrupt_total",
    "audit_records_unprocessable_total",
    "audit_nginx_records_by_zone_total",
    "audit_missing_suppressed_total",
    "audit_membership_changes_total",
}
AUDIT_GAUGES = {
    "audit_log_completeness_ratio", "audit_stream_silent", "audit_reconcile_pending",
    "audit_deadletter_spans", "audit_deadletter_bytes", "audit_deadletter_max_bytes",
}
AUDIT_HISTOGRAMS = {"audit_ingest_lag_seconds", "audit_export_duration_seconds"}
AUDIT_METRICS = (
    AUDIT_COUNTERS
    | AUDIT_GAUGES
    | {f"{h}_{suffix}" for h in AUDIT_HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)
# The collector's loss counters, as a live v0.160.0 collector exposes them (no _total suffix).
SIGNALS = ("log_records", "metric_points", "spans")
COLLECTOR_LOSS_STEMS = (
    "otelcol_exporter_send_failed",
    "otelcol_exporter_enqueue_failed",
    "otelcol_receiver_refused",
    "otelcol_processor_memory_limiter_refused",
)
COLLECTOR_METRICS = {f"{stem}_{sig}" for stem in COLLECTOR_LOSS_STEMS for sig in SIGNALS} | {
    "otelcol_exporter_queue_size",
    "otelcol_exporter_queue_capacity",
}
# Series Prometheus itself writes.
PROMETHEUS_METRICS = {"up", "ALERTS"}
# nginx's own per-zone counter (nginx-module-vts /status/format/prometheus), which Prometheus
# scrapes from nginx for the zone rules of alerts.yml (docs/scale-out.md).
NGINX_METRICS = {"nginx_vts_server_requests_total"}
# What the recording rules of alerts.yml write (level:metric:operations).
RECORDED_METRICS = {
    "zone:nginx_vts_requests:increase5m",
    "zone:audit_nginx_records:increase5m",
    "zone:audit_nginx_records_shortfall:increase5m",
}
ALLOWED_METRICS = (AUDIT_METRICS | COLLECTOR_METRICS | PROMETHEUS_METRICS | NGINX_METRICS
                   | RECORDED_METRICS)


# ------------------------------------------------------------------------------------ helpers


def promtool() -> str:
    """The real promtool (Debian package `prometheus`); AUDIT_GUARD_PROMTOOL_BIN overrides it."""
    path = os.environ.get("AUDIT_GUARD_PROMTOOL_BIN") or shutil.which("promtool")
    if not path or not Path(path).exists():
        raise FileNotFoundError(
            "promtool not found: run `make setup` (scripts/bootstrap installs the Debian package "
            "`prometheus`)"
        )
    return path


def run_promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def walk(node: Any) -> Iterator[tuple[str | None, Any]]:
    """(key, value) of every mapping entry and list item, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield None, item
            yield from walk(item)


def all_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return out


def prometheus_exprs(dash: dict[str, Any]) -> list[str]:
    """PromQL of every Prometheus target and annotation in the dashboard."""
    return [v for k, v in walk(dash) if k == "expr" and isinstance(v, str)]


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables → a literal duration, so promtool can parse the query."""
    return re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)


# PromQL words that are not metric names when they are not followed by `(`.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan", "atan2",
    # aggregation operators (their parenthesis may come after a `by (...)` clause)
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label matchers, durations, grouping clauses,
    function names and keywords removed). `{__name__=...}` selectors are not allowed: names
    must be spelled out so that they can be checked."""
    assert "__name__" not in expr, f"spell metric names out: {expr}"
    s = grafana_to_promql(expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "5m", s)
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\()?", s):
        if m.group(2) or m.group(1) in PROMQL_WORDS:
            continue
        names.add(m.group(1))
    return names


def explore_link_datasource_uids(url: str) -> set[str]:
    """Datasource uids named in a Grafana Explore URL (`panes=` or the older `left=`)."""
    query = urllib.parse.urlparse(url).query
    uids: set[str] = set()
    for key, values in urllib.parse.parse_qs(query).items():
        if key not in ("panes", "left"):
            continue
        for value in values:
            data = json.loads(value)
            for k, v in walk(data):
                if k == "datasource" and isinstance(v, str):
                    uids.add(v)
                if k == "datasource" and isinstance(v, dict) and "uid" in v:
                    uids.add(v["uid"])
    return uids


def explore_link_queries(url: str) -> list[str]:
    query = urllib.parse.urlparse(url).query
    panes = urllib.parse.parse_qs(query).get("panes", [])
    return [
        q["query"]
        for value in panes
        for pane in json.loads(value).values()
        for q in pane.get("queries", [])
    ]


def compose_services() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)["services"]


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
    """container target → (host path, read-only) of a service's bind mounts."""
    out = {}
    for vol in service.get("volumes", []):
        assert isinstance(vol, str), "short volume syntax expected"
        parts = vol.split(":")
        if parts[0].startswith((".", "/")):
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
            out[parts[1]] = ((COMPOSE_FILE.parent / parts[0]).resolve(), ro)
    return out
