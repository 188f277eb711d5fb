"""The Grafana dashboard and its provisioning (otel/grafana/), checked statically (Grafana and
Tempo do not run in the tests):

- the dashboard JSON parses, has uid `audit-guard` and the expected panels; its PromQL parses
  (the real promtool, as recording rules) and names only documented metrics;
- every datasource uid it references (panels, targets, variables, data links to Tempo Explore)
  is provisioned, and compose.yaml mounts the provisioning where Grafana reads it;
- every `$variable` it uses is defined and every defined one is used: `source` and `host` from
  the labels the processor's instruments declare, filtering every selector of a metric that
  carries that label; `user` feeds the per-user TraceQL tables;
- every span attribute its TraceQL names is one the processor writes;
- no exemplar claim is left (the processor's /metrics carries no trace ids).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from audit_guard.telemetry import INSTRUMENTS, Instrument
from tests.support.observability_files import (
    ALLOWED_METRICS,
    COLLECTOR_LOSS_STEMS,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    GRAFANA_DIR,
    REPO,
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

VARIABLES = {"source", "host", "user"}
# $name, ${name}, ${name:format}, ${name.path}, [[name]]; names starting with __ are Grafana's.
VARIABLE_REF = re.compile(r"\$\{(\w+)[^}]*\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
TRACEQL_SPAN_ATTRIBUTE = re.compile(r"\bspan\.([A-Za-z_][\w.]*\w)")
SELECTOR = re.compile(r"\b(audit_\w+)(\{[^}]*\})?")
NEGATION = re.compile(r"\b(no|not|without|none)\b", re.I)


def variables_used(node: Any) -> set[str]:
    names: set[str] = set()
    for _, value in walk(node):
        if isinstance(value, str):
            for m in VARIABLE_REF.finditer(value):
                name = next(g for g in m.groups() if g)
                if not name.startswith("__"):
                    names.add(name)
    return names


def traceql_queries(dash: dict[str, Any]) -> list[str]:
    """TraceQL of every Tempo target and every data link to Tempo Explore."""
    queries = [
        t["query"]
        for p in all_panels(dash)
        for t in p.get("targets", [])
        if t.get("datasource", {}).get("uid") == "tempo"
    ]
    for key, value in walk(dash):
        if key == "url" and isinstance(value, str) and value.startswith("/explore?"):
            queries += explore_link_queries(value)
    return queries


def instrument_of(series: str) -> Instrument | None:
    """The declared instrument behind a series name (histograms: _bucket, _sum, _count)."""
    if series in INSTRUMENTS:
        return INSTRUMENTS[series]
    base = re.sub(r"_(bucket|sum|count)$", "", series)
    inst = INSTRUMENTS.get(base)
    return inst if inst is not None and inst.kind == "histogram" else None


def panel_prometheus_exprs(dash: dict[str, Any]) -> list[str]:
    """PromQL of the panels' targets (the alert annotation is not filtered by the variables)."""
    return [
        t["expr"] for p in all_panels(dash) for t in p.get("targets", []) if "expr" in t
    ]


def variable(name: str) -> dict[str, Any]:
    (found,) = [v for v in dashboard()["templating"]["list"] if v["name"] == name]
    return found


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
    dash = dashboard()  # json.loads: the file parses
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
    # Tables of traces straight from Tempo (TraceQL).
    tempo_panels = [p for p in all_panels(dash) if p.get("datasource", {}).get("uid") == "tempo"]
    assert tempo_panels
    for panel in tempo_panels:
        assert panel["type"] == "table", panel["title"]
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
    # Anonymous viewing is off unless asked for (tests/unit/deploy/test_compose.py renders it).
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS_VIEWER:-false}"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert "127.0.0.1:3000:3000" in svc["ports"]


# ----------------------------------------------------------------------------------- variables


def test_every_variable_used_is_defined_and_every_defined_one_is_used() -> None:
    dash = dashboard()
    defined = [v["name"] for v in dash["templating"]["list"]]
    assert len(defined) == len(set(defined)), "duplicate variable names"
    assert set(defined) == VARIABLES
    outside_templating = {k: v for k, v in dash.items() if k != "templating"}
    used = variables_used(outside_templating)
    assert used <= set(defined), f"undefined variables: {used - set(defined)}"
    assert used == set(defined), f"defined but never used: {set(defined) - used}"


def test_variable_reference_parsing() -> None:
    assert variables_used(
        {"a": '{a=~"$source"} ${host} ${user:raw} [[x]] $__rate_interval ${__from} $__all',
         "b": ["${__field.labels.rule}", "no dollar"]}
    ) == {"source", "host", "user", "x"}


def test_source_and_host_come_from_the_declared_labels() -> None:
    for name in ("source", "host"):
        var = variable(name)
        assert var["type"] == "query", name
        assert var["datasource"] == {"type": "prometheus", "uid": "prometheus"}, name
        m = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"])
        assert m, var["query"]
        metric, label = m.groups()
        assert label == name
        assert name in INSTRUMENTS[metric].labels, f"{metric} has no {name} label"
        # One value or all: "All" is a regex that also matches a series without the label.
        assert var["includeAll"] and var["allValue"] == ".*" and not var["multi"], name
    user = variable("user")
    assert user["type"] == "textbox" and user["label"] == "user.id"


def test_every_selector_of_a_labelled_metric_is_filtered_by_its_variable() -> None:
    exprs = panel_prometheus_exprs(dashboard())
    filtered = {"source": 0, "host": 0}
    for expr in exprs:
        for m in SELECTOR.finditer(grafana_to_promql(expr)):
            inst = instrument_of(m.group(1))
            assert inst is not None, m.group(1)
            matchers = m.group(2) or ""
            for label in filtered:
                if label in inst.labels:
                    assert f'{label}=~"${label}"' in matchers, f"{m.group(0)} ignores ${label}"
                    filtered[label] += 1
    assert all(filtered.values()), filtered


# ------------------------------------------------------------------------------------- per user


def test_a_user_s_flagged_requests_come_from_tempo_as_a_table() -> None:
    by_title = {p["title"]: p for p in all_panels(dashboard())}
    panel = by_title["Flagged requests of a user"]
    assert panel["type"] == "table"
    assert panel["datasource"] == {"type": "tempo", "uid": "tempo"}
    (target,) = panel["targets"]
    assert target["datasource"] == panel["datasource"]
    assert target["queryType"] == "traceql" and target["tableType"] in ("spans", "traces")
    query = target["query"]
    assert query.startswith('{ span.user.id = "$user" && span.audit.flags != nil }'), query
    # The whole activity of the user sits next to it.
    (everything,) = by_title["Requests of a user"]["targets"]
    assert everything["query"].startswith('{ span.user.id = "$user" }')
    row = next(p for p in all_panels(dashboard()) if p["type"] == "row" and "$user" in p["title"])
    assert row["gridPos"]["y"] < panel["gridPos"]["y"]


def test_traceql_names_only_span_attributes_the_processor_writes() -> None:
    # Attribute keys are string literals in the processor (spans.py and the sources); a renamed
    # attribute leaves the dashboard searching for nothing.
    literals = set()
    for path in (REPO / "processor").rglob("*.py"):
        literals |= set(re.findall(r'"([a-z_]+(?:\.[a-z_]+)+)"', path.read_text()))
    queries = traceql_queries(dashboard())
    assert queries
    for query in queries:
        names = set(TRACEQL_SPAN_ATTRIBUTE.findall(query))
        assert names, query
        assert names <= literals, f"{query}: unknown span attributes {names - literals}"


def test_every_panel_and_target_names_its_datasource() -> None:
    provisioned = {d["uid"] for d in load_yaml(DATASOURCES)["datasources"]}
    for panel in all_panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in provisioned, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


# ------------------------------------------------------------------------------------ exemplars


def test_no_exemplar_claim_remains() -> None:
    # /metrics is Prometheus text 0.0.4 without trace ids: nothing may promise metric → trace
    # links by exemplar (a datasource destination, a panel toggle, a sentence in the docs).
    for key, value in walk(dashboard()):
        assert key is None or "exemplar" not in key.lower(), key
        if isinstance(value, str):
            assert "exemplar" not in value.lower(), value
    for source in load_yaml(DATASOURCES)["datasources"]:
        assert not any("exemplar" in k.lower() for k in source.get("jsonData", {})), source
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    texts += [p for p in sorted(GRAFANA_DIR.rglob("*")) if p.is_file()]
    for path in texts:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "exemplar" in line.lower():
                assert NEGATION.search(line), f"{path.relative_to(REPO)}: {line.strip()}"
