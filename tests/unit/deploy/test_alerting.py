"""Alerting (otel/prometheus/), checked with the real tools (the dashboard and the Grafana
provisioning: tests/unit/deploy/test_grafana.py):

- the Prometheus config, the alert rules and their unit tests pass the real `promtool` (Debian
  package `prometheus`; a missing tool is a failure, not a skip — `make test` installs it), and a
  weakened rule makes the unit tests fail (they test something);
- every alert carries severity, summary, description and an absolute `runbook_url`: one base
  (named in the header of alerts.yml) for every alert, then `#runbook-<alert name in lowercase>`,
  a heading of docs/runbooks.md; and has a firing and a quiet case in alerts_test.yml;
- every metric name in the alert rules is a documented one: audit-guard's self-metrics, the
  collector's loss counters (names as a v0.160.0 collector exposes them on :8888), or
  Prometheus's own `up` / `ALERTS`;
- compose.yaml mounts what the configs expect where they expect it.
"""

from __future__ import annotations

import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from audit_guard.telemetry import INSTRUMENTS
from tests.support.observability_files import (
    ALERTS,
    ALERTS_TEST,
    ALLOWED_METRICS,
    AUDIT_COUNTERS,
    AUDIT_GAUGES,
    AUDIT_HISTOGRAMS,
    COLLECTOR_METRICS,
    PROM_CONFIG,
    RECORDED_METRICS,
    REPO,
    bind_mounts,
    compose_services,
    load_yaml,
    metric_names,
    run_promtool,
)
from tests.unit.project.test_docs import github_anchors

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
    "AuditNginxZoneShortfall",
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


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def recording_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "record" in r]


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


def test_zone_rule_tests_catch_a_double_count_and_a_missed_reset(tmp_path: Path) -> None:
    # Controls of the scale-out zone rules: counting VTS's code="total" and its classes both
    # (an `or` without `on`), and taking a difference where a counter reset needs increase().
    text = ALERTS.read_text()
    weakened = {
        "double count": text.replace("or on (job, instance, host)\n", "or\n"),
        "reset": text.replace("sum by (zone) (increase(audit_nginx_records_by_zone_total",
                              "sum by (zone) (delta(audit_nginx_records_by_zone_total"),
    }
    for what, changed in weakened.items():
        assert changed != text, what
        (tmp_path / "alerts.yml").write_text(changed)
        shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
        result = run_promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
        assert result.returncode != 0, what
        assert "zone:" in result.stdout + result.stderr, what


def test_recording_rules_are_the_documented_ones() -> None:
    # The zone rules (docs/scale-out.md): what they record, and that they read only documented
    # metrics — the processors' per-zone counter and nginx's VTS counter.
    assert {r["record"] for r in recording_rules()} == RECORDED_METRICS
    used = set().union(*(metric_names(r["expr"]) for r in recording_rules()))
    assert used <= ALLOWED_METRICS, used - ALLOWED_METRICS
    assert {"audit_nginx_records_by_zone_total", "nginx_vts_server_requests_total"} <= used


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
    assert ann["runbook_url"] == f"{runbook_base()}#runbook-{name.lower()}"
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
        "AuditNginxZoneShortfall",
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
    # a metric an alert reads must be one the processor declares (audit_guard/telemetry.py).
    plain = AUDIT_COUNTERS | AUDIT_GAUGES
    assert {n for n, i in INSTRUMENTS.items() if i.kind != "histogram"} >= plain
    assert {n for n, i in INSTRUMENTS.items() if i.kind == "histogram"} >= AUDIT_HISTOGRAMS
    assert "audit_spans_dropped_total" not in INSTRUMENTS


def test_metrics_page_lists_every_instrument() -> None:
    # docs/metrics.md is generated from INSTRUMENTS (tests/unit/project/test_docs.py checks it is
    # up to date);
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


def runbook_base() -> str:
    """The one runbook base alerts.yml declares in its header (`#   runbook base: <url>`)."""
    found = re.findall(r"^#\s+runbook base: (\S+)$", ALERTS.read_text(), re.M)
    assert len(found) == 1, "alerts.yml must name exactly one runbook base in its header"
    return found[0]


def test_the_runbook_base_is_absolute() -> None:
    # Alertmanager and Grafana open runbook_url as is: a repository-relative path goes nowhere.
    url = urllib.parse.urlsplit(runbook_base())
    assert url.scheme == "https" and url.netloc, runbook_base()
    assert not url.query and not url.fragment, runbook_base()
    assert url.path.endswith("/runbooks.md"), "the base is the published docs/runbooks.md"


def test_every_runbook_link_has_its_runbook_section() -> None:
    page = REPO / "docs" / "runbooks.md"
    text = page.read_text()
    headings = re.findall(r"^### Runbook: (\w+)$", text, re.M)
    assert {r["alert"] for r in alert_rules()} <= set(headings)
    # The anchor each runbook_url names is the one GitHub gives that heading.
    anchors = github_anchors(text)
    for rule in alert_rules():
        base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert base == runbook_base(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {page.name}"


def test_the_alert_unit_tests_expect_the_same_runbook_urls() -> None:
    # promtool compares annotations exactly; this names the place to change when rebasing.
    expected = {
        ann["runbook_url"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        for alert in case.get("exp_alerts") or []
        for ann in [alert.get("exp_annotations", {})]
        if "runbook_url" in ann
    }
    assert expected
    assert expected <= {r["annotations"]["runbook_url"] for r in alert_rules()}
