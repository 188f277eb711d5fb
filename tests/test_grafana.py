"""The Grafana dashboard and its provisioning (otel/grafana/), checked statically:

- the dashboard's PromQL parses (promtool, as recording rules), the dashboard JSON has uid
  `audit-guard` and the expected panels, and every datasource uid it references (panels,
  targets, data links to Tempo Explore) is provisioned;
- compose.yaml mounts the provisioning and the dashboards where Grafana reads them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.observability_files import (
    ALLOWED_METRICS,
    COLLECTOR_LOSS_STEMS,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    SIGNALS,
    all_panels,
    bind_mounts,
    compose_services,
    dashboard,
    explore_link_datasource_uids,
    explore_link_queries,
    grafana_to_promql,
    load_yaml,
    metric_names,
    prometheus_exprs,
    run_promtool,
    walk,
)

# ----------------------------------------------------------------------------------- promtool


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


