"""Alerting and dashboards (otel/prometheus/, otel/grafana/), checked with the real tools:

- the Prometheus config, the alert rules and their unit tests pass the real `promtool` (Debian
  package `prometheus`; a missing tool is a failure, not a skip — `make test` installs it), and a
  weakened rule makes the unit tests fail (they test something);
- every alert carries severity, summary, description and a `runbook_url` to the anchor
  `docs/runbooks.md#runbook-<alert name in lowercase>`, which exists, and has a firing and a
  quiet case in alerts_test.yml;
- every metric name in the alert rules and the dashboard is a documented one: audit-guard's
  self-metrics, the collector's loss counters (names as a v0.160.0 collector exposes them on
  :8888), or Prometheus's own `up` / `ALERTS`;
- the dashboard's PromQL parses (promtool, as recording rules), the dashboard JSON has uid
  `audit-guard` and the expected panels, and every datasource uid it references (panels,
  targets, data links to Tempo Explore) is provisioned;
- compose.yaml mounts what the configs expect where they expect it.
"""

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

import pytest
import yaml

from processor.demo.procs import repo_root
from processor.telemetry import INSTRUMENTS

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
ALLOWED_METRICS = AUDIT_METRICS | COLLECTOR_METRICS | PROMETHEUS_METRICS

SEVERITIES = {"critical", "warning"}
EXPECTED_ALERTS = {
    "AuditGuardTargetDown",
    "AuditSpansDeadLettered",
    "AuditDeadLetterSpoolNearlyFull",
    "AuditStateWriteFailing",
    "AuditStateCorrupt",
    "AuditRecordsUnprocessable",
    "AuditAppRecordsMissing",
    "AuditNginxRecordsMissing",
    "AuditLogCompletenessLow",
    "AuditStreamSilent",
    "AuditRecordsTruncated",
    "AuditFieldViolations",
    "AuditIngestLagHigh",
    "AuditReconcileEvictions",
    "AuditCounterScrapeFailing",
    "OtelcolExporterSendFailed",
    "OtelcolExporterEnqueueFailed",
    "OtelcolReceiverRefused",
    "OtelcolMemoryLimiterRefused",
    "OtelcolExporterQueueNearlyFull",
}


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


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


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


# ---------------------------------------------------------------------------- the real promtool


def test_promtool_is_the_debian_one_and_runs() -> None:
    result = run_promtool("--version")
    assert result.returncode == 0, result.stderr
    assert re.search(r"promtool, version \d+\.\d+\.\d+", result.stdout + result.stderr)


def test_prometheus_config_passes_promtool() -> None:
    result = run_promtool("check", "config", str(PROM_CONFIG))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # The rule file was found relative to the config and checked with it.
    assert "1 rule files found" in out and str(ALERTS.name) in out, out


def test_config_check_notices_a_missing_rule_file(tmp_path: Path) -> None:
    # Control: the config check really resolves rule_files (here the rule file is absent).
    shutil.copy(PROM_CONFIG, tmp_path / "prometheus.yml")
    result = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode != 0


def test_alert_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_catch_a_weakened_rule(tmp_path: Path) -> None:
    # Control: loosen the completeness threshold from 99 % to 90 %; the unit tests must fail on
    # exactly that alert.
    text = ALERTS.read_text()
    assert "audit_log_completeness_ratio < 0.99" in text
    (tmp_path / "alerts.yml").write_text(
        text.replace("audit_log_completeness_ratio < 0.99", "audit_log_completeness_ratio < 0.90")
    )
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = run_promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "AuditLogCompletenessLow" in result.stdout + result.stderr


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    # promtool parses every dashboard query as the expression of a recording rule.
    exprs = prometheus_exprs(dashboard())
    assert exprs
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------- alert rules


def test_the_expected_alerts_exist() -> None:
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_is_written_for_an_operator(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, name
    ann = rule.get("annotations", {})
    assert set(ann) >= {"summary", "description", "runbook_url"}, name
    assert ann["runbook_url"] == f"docs/runbooks.md#runbook-{name.lower()}"
    assert 10 <= len(ann["summary"]) <= 160, f"{name}: summary should be one short line"
    assert len(ann["description"]) >= 150, f"{name}: description should say what to check"
    assert "\n" not in ann["summary"]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in load_yaml(ALERTS_TEST)["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    for name in EXPECTED_ALERTS:
        assert any(c for c in cases.get(name, [])), f"{name}: no case where it fires"
        assert any(not c for c in cases.get(name, [])), f"{name}: no case where it stays quiet"
    assert load_yaml(ALERTS_TEST)["rule_files"] == [ALERTS.name]


def test_alert_severities_match_what_they_mean() -> None:
    # Loss or an audit gap right now pages; degraded records warn.
    severity = {r["alert"]: r["labels"]["severity"] for r in alert_rules()}
    for name in (
        "AuditGuardTargetDown",
        "AuditStateWriteFailing",
        "AuditAppRecordsMissing",
        "AuditNginxRecordsMissing",
        "AuditLogCompletenessLow",
        "AuditStreamSilent",
        "OtelcolExporterSendFailed",
        "OtelcolExporterEnqueueFailed",
    ):
        assert severity[name] == "critical", name
    # Reconciliation partly blind (evicted requests, an unreadable nginx counter endpoint): the
    # records still flow and other checks still run, so these warn.
    for name in ("AuditReconcileEvictions", "AuditCounterScrapeFailing"):
        assert severity[name] == "warning", name
    # Dead-lettered spans are safe on disk (warning: resend them in working hours); a nearly
    # full spool is about to turn every permanent refusal into a backed-up pipeline (critical).
    assert severity["AuditSpansDeadLettered"] == "warning"
    assert severity["AuditDeadLetterSpoolNearlyFull"] == "critical"
    # A state file moved aside (a one-off, already recovered from) and a record the pipeline
    # failed on (a bug; the record is exported with its raw text) lose nothing: warnings. A
    # state write that keeps failing stalls the pipeline: page.
    for name in ("AuditStateCorrupt", "AuditRecordsUnprocessable"):
        assert severity[name] == "warning", name


def test_metric_name_extraction() -> None:
    assert metric_names(
        'sum by (job, le) (rate(a_bucket{x="y", le=~"1|2"}[5m])) / ignoring (f) group_left '
        "sum(b_total offset 10m) > 0.5 or c unless d[1h:1m]"
    ) == {"a_bucket", "b_total", "c", "d"}
    assert metric_names("topk(10, sum by (rule) (increase(r_total[$__range])))") == {"r_total"}
    assert metric_names("histogram_quantile(0.95, sum(rate(h_bucket[${__rate_interval}])))") == {
        "h_bucket"
    }


def test_alerts_use_only_documented_metrics() -> None:
    used: set[str] = set()
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in its expression"
        unknown = names - ALLOWED_METRICS
        assert not unknown, f"{rule['alert']}: undocumented metrics {unknown}"
        used |= names
    # Every collector loss counter and every audit signal the brief lists is alerted on.
    assert used >= COLLECTOR_METRICS, COLLECTOR_METRICS - used
    assert {
        "audit_records_missing_total",
        "audit_log_completeness_ratio",
        "audit_records_truncated_total",
        "audit_field_violations_total",
        "audit_stream_silent",
        "audit_ingest_lag_seconds_bucket",
        "audit_reconcile_evicted_total",
        "audit_counter_scrape_errors_total",
        "audit_spans_deadlettered_total",
        "audit_deadletter_spans",
        "audit_deadletter_bytes",
        "audit_deadletter_max_bytes",
        "audit_state_write_errors_total",
        "audit_state_corrupt_total",
        "audit_records_unprocessable_total",
    } <= used


def test_the_allowed_audit_metrics_are_the_declared_instruments() -> None:
    # A retired instrument (audit_spans_dropped_total) must not linger in alerts or panels, and
    # a metric an alert reads must be one the processor declares (processor/telemetry.py).
    plain = AUDIT_COUNTERS | AUDIT_GAUGES
    assert {n for n, i in INSTRUMENTS.items() if i.kind != "histogram"} >= plain
    assert {n for n, i in INSTRUMENTS.items() if i.kind == "histogram"} >= AUDIT_HISTOGRAMS
    assert "audit_spans_dropped_total" not in INSTRUMENTS


def test_metrics_page_lists_every_instrument() -> None:
    # docs/metrics.md is generated from INSTRUMENTS (tests/test_docs.py checks it is up to date);
    # this checks the checked-in page as an operator reads it.
    page = (REPO / "docs" / "metrics.md").read_text()
    rows = set(re.findall(r"^\| `(audit_\w+)` \|", page, re.M))
    assert rows == set(INSTRUMENTS), {
        "declared but not in docs/metrics.md (run make docs)": set(INSTRUMENTS) - rows,
        "in docs/metrics.md but not declared (run make docs)": rows - set(INSTRUMENTS),
    }


def test_prometheus_scrapes_both_jobs_at_the_compose_services() -> None:
    config = load_yaml(PROM_CONFIG)
    assert config["rule_files"] == [ALERTS.name]
    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert jobs["audit-guard"] == ["processor:8081"]
    assert jobs["otelcol"] == ["collector:8888"]
    by_name = {job["job_name"]: job for job in config["scrape_configs"]}
    assert by_name["audit-guard"].get("metrics_path", "/metrics") == "/metrics"
    services = compose_services()
    assert {"processor", "collector"} <= set(services)
    collector_env = services["collector"]["environment"]
    assert collector_env["AUDIT_GUARD_COLLECTOR_METRICS_PORT"] == "8888"
    assert collector_env["AUDIT_GUARD_COLLECTOR_METRICS_HOST"] == "0.0.0.0"


# ----------------------------------------------------------------------------------- dashboard


def test_dashboard_is_valid_and_has_the_panels() -> None:
    dash = dashboard()
    assert dash["uid"] == "audit-guard"
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["title"]
    panels = all_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"}, p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    by_title = {p["title"]: p for p in panels if p["type"] != "row"}

    def exprs(title: str) -> str:
        return "\n".join(prometheus_exprs(by_title[title]))

    assert "audit_log_completeness_ratio" in exprs("Completeness per source")
    flags = exprs("Flags over time")
    for metric in (
        "audit_records_truncated_total",
        "audit_field_violations_total",
        "audit_records_delayed_total",
        "audit_records_missing_total",
    ):
        assert f"rate({metric}" in flags, metric
    missing_late = exprs("Missing vs late")
    assert "audit_records_missing_total" in missing_late
    assert "audit_records_late_total" in missing_late
    assert "audit_reconcile_pending" in missing_late
    dead = exprs("Dead-lettered spans")
    assert "sum by (reason) (increase(audit_spans_deadlettered_total" in dead
    assert "audit_deadletter_spans" in dead
    assert {"audit_deadletter_bytes", "audit_deadletter_max_bytes"} <= metric_names(
        exprs("Dead-letter spool fill")
    )
    assert {
        "audit_state_write_errors_total",
        "audit_state_corrupt_total",
        "audit_records_unprocessable_total",
    } <= metric_names(exprs("State and processing errors"))
    lag = exprs("Ingest lag p50 / p95")
    assert "histogram_quantile(0.5," in lag and "histogram_quantile(0.95," in lag
    assert "audit_ingest_lag_seconds_bucket" in lag
    rules = exprs("Top rules")
    assert "topk(" in rules and "audit_rule_matches_total" in rules
    loss = metric_names(exprs("Collector loss counters"))
    assert {f"{stem}_{sig}" for stem in COLLECTOR_LOSS_STEMS for sig in SIGNALS} <= loss
    assert {"otelcol_exporter_queue_size", "otelcol_exporter_queue_capacity"} <= metric_names(
        exprs("Collector queue fill")
    )


def test_dashboard_uses_only_documented_metrics() -> None:
    for expr in prometheus_exprs(dashboard()):
        unknown = metric_names(expr) - ALLOWED_METRICS
        assert not unknown, f"undocumented metrics {unknown} in {expr}"


def test_dashboard_links_panels_to_traces_in_tempo() -> None:
    dash = dashboard()
    links = [v["url"] for k, v in walk(dash) if isinstance(v, dict) and "url" in v and k is None]
    explore = [u for u in links if u.startswith("/explore?")]
    assert explore, "no data links to Explore"
    traceql = [q for u in explore for q in explore_link_queries(u)]
    assert "{ span.audit.truncated = true }" in traceql
    assert "{ span.audit.missing = true }" in traceql
    for url in explore:
        assert explore_link_datasource_uids(url) == {"tempo"}, url
        assert "${__from}" in url and "${__to}" in url, f"link drops the time range: {url}"
    # A table of flagged traces straight from Tempo (TraceQL).
    tempo_panels = [p for p in all_panels(dash) if p.get("datasource", {}).get("uid") == "tempo"]
    assert tempo_panels
    for panel in tempo_panels:
        for target in panel["targets"]:
            assert target["queryType"] == "traceql"
            assert target["query"].startswith("{") and "span.audit." in target["query"]


def test_dashboard_datasources_are_provisioned() -> None:
    provisioned = {d["uid"]: d for d in load_yaml(DATASOURCES)["datasources"]}
    assert {uid: provisioned[uid]["type"] for uid in ("prometheus", "tempo", "jaeger")} == {
        "prometheus": "prometheus",
        "tempo": "tempo",
        "jaeger": "jaeger",
    }
    referenced: set[str] = set()
    for key, value in walk(dashboard()):
        if key == "datasource" and isinstance(value, dict):
            referenced.add(value["uid"])
        if key == "url" and isinstance(value, str) and value.startswith("/explore?"):
            referenced |= explore_link_datasource_uids(value)
    referenced.discard("-- Grafana --")  # the built-in annotations datasource
    assert referenced, "the dashboard references no datasource"
    assert referenced <= set(provisioned), referenced - set(provisioned)


def test_datasource_provisioning() -> None:
    data = load_yaml(DATASOURCES)
    assert data["apiVersion"] == 1
    ds = {d["uid"]: d for d in data["datasources"]}
    services = compose_services()
    # URLs point at the compose services on their container ports.
    assert ds["prometheus"]["url"] == "http://prometheus:9090"
    assert ds["tempo"]["url"] == "http://tempo:3200"
    assert ds["jaeger"]["url"] == "http://jaeger:16686"
    assert {"prometheus", "tempo", "jaeger"} <= set(services)
    assert [d["uid"] for d in data["datasources"] if d.get("isDefault")] == ["prometheus"]
    # Exemplars of Prometheus link to Tempo; Prometheus stores them.
    dest = ds["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {d["datasourceUid"] for d in dest} <= set(ds) and dest[0]["datasourceUid"] == "tempo"
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    # Tempo: traces-to-logs off (no log datasource in the stack).
    tempo = ds["tempo"].get("jsonData", {})
    assert "tracesToLogs" not in tempo and "tracesToLogsV2" not in tempo


# ------------------------------------------------------------------------------ compose wiring


def test_prometheus_service_mounts_config_and_rules_side_by_side() -> None:
    svc = compose_services()["prometheus"]
    binds = bind_mounts(svc)
    config_target = next(
        a.split("=", 1)[1] for a in svc["command"] if a.startswith("--config.file=")
    )
    assert binds[config_target] == (PROM_CONFIG, True)
    # rule_files is relative to the config file: alerts.yml must sit next to it in the container.
    rules_target = str(Path(config_target).parent / ALERTS.name)
    assert binds[rules_target] == (ALERTS, True)
    assert "127.0.0.1:9090:9090" in svc["ports"]


def test_grafana_service_mounts_provisioning_and_dashboards() -> None:
    svc = compose_services()["grafana"]
    binds = bind_mounts(svc)
    assert binds["/etc/grafana/provisioning/datasources"] == (DATASOURCES.parent, True)
    assert binds["/etc/grafana/provisioning/dashboards"] == (DASHBOARD_PROVIDERS.parent, True)
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert binds[provider["options"]["path"]] == (DASHBOARD.parent, True)
    env = svc["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert "127.0.0.1:3000:3000" in svc["ports"]


def test_every_runbook_link_has_its_runbook_section() -> None:
    page = REPO / "docs" / "runbooks.md"
    headings = re.findall(r"^### Runbook: (\w+)$", page.read_text(), re.M)
    assert {r["alert"] for r in alert_rules()} <= set(headings)
    # The anchor each runbook_url names is the one a Markdown renderer gives that heading
    # (GitHub: lower case, punctuation dropped, spaces as dashes).
    anchors = {"runbook-" + h.lower() for h in headings}
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (REPO / path).resolve() == page.resolve(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {path}"
