"""Dropped app audit lines, end to end through the real programs on loopback:

    demo upstream (told to write no audit line: ?noaudit=1) ← real nginx → collector
    → audit-guard (reconcile.window_s = 3) → collector → real Jaeger
    real Prometheus (Debian package) ← scrapes audit-guard's /metrics, evaluates the shipped
    otel/prometheus/alerts.yml unchanged

Asserted as an operator would see it: missing_record spans in Jaeger, the app completeness
ratio falling in Prometheus, and AuditAppRecordsMissing firing in Prometheus's alerts API. The
counter side is checked on the same run: nginx's real stub_status against the access log shows
no shortfall, because nginx did log every request.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

from demo.backends import span_tags
from demo.procs import ManagedProcess, free_port, http_ok, repo_root, wait_until
from demo.stack import Stack
from demo.traffic import DemoRequest, send

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

ALERTS = repo_root() / "otel" / "prometheus" / "alerts.yml"


def prometheus_binary() -> str:
    """The real Prometheus server (Debian package `prometheus`, installed by `make setup`)."""
    path = os.environ.get("AUDIT_GUARD_PROMETHEUS_BIN") or shutil.which("prometheus")
    if path is None:
        raise RuntimeError("prometheus not found: run `make setup` (scripts/bootstrap installs "
                           "the Debian package `prometheus`)")
    return path


class Prometheus:
    def __init__(self, workdir: Path, scrape_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{
                "job_name": "audit-guard",
                "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}],
            }],
        }))
        self.proc = ManagedProcess("prometheus", [
            prometheus_binary(), f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ], log_dir=workdir)

    def start(self) -> Prometheus:
        self.proc.start().wait_ready(lambda: http_ok(f"{self.url}/-/ready"), timeout=60)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as reply:
            body: dict = orjson.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query: str) -> float | None:
        result = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": query}))["result"]
        return float(result[0]["value"][1]) if result else None

    def alert(self, name: str) -> dict | None:
        for alert in self._get("/api/v1/alerts")["alerts"]:
            if alert["labels"].get("alertname") == name:
                return alert
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {
        "AUDIT_GUARD_RECONCILE__WINDOW_S": "3",
        "AUDIT_GUARD_RECONCILE__SCRAPE_INTERVAL_S": "1",
        "AUDIT_GUARD_RECONCILE__SETTLE_S": "2",
    }
    with Stack(tmp_path_factory.mktemp("stack"), processor_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), stack.admin_port).start()
    yield prom
    prom.proc.stop()


def test_dropped_app_audit_lines_fire_the_alert(stack, prometheus) -> None:
    ratio = 'audit_log_completeness_ratio{job="audit-guard",source="app"}'
    for i in range(4):
        assert send(stack.base_url, DemoRequest("GET", f"/v1/datasets/ds-{i}/documents")) == 200
    wait_until(lambda: prometheus.value(ratio) == 1.0, 60,
               "the app completeness ratio (1.0) in Prometheus")
    assert prometheus.alert("AuditAppRecordsMissing") is None

    dropped = [f"/v1/datasets/ds-drop-{i}/documents?noaudit=1" for i in range(3)]
    for path in dropped:
        assert send(stack.base_url, DemoRequest("GET", path)) == 200

    wait_until(lambda: (prometheus.alert("AuditAppRecordsMissing") or {}).get("state")
               == "firing", 90, "AuditAppRecordsMissing to fire in Prometheus")
    alert = prometheus.alert("AuditAppRecordsMissing")
    assert alert["labels"]["severity"] == "critical"
    assert float(alert["value"]) == 3
    assert prometheus.value(ratio) == pytest.approx(4 / 7)

    # The status page's API says so too.
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.admin_port}/api/status") as reply:
        sources = {s["name"]: s for s in orjson.loads(reply.read())["sources"]}
    assert sources["app"]["completeness"] == pytest.approx(4 / 7)
    assert sources["app"]["silent"] is False

    # Each dropped request has its missing_record span, in its own trace, under nginx's span.
    lines = [orjson.loads(x) for x in stack.nginx_paths.access_log.read_bytes().splitlines()]
    request_ids = [line["request_id"] for line in lines if "noaudit=1" in line["request_uri"]]
    assert len(request_ids) == 3
    for rid in request_ids:
        (span,) = stack.jaeger.wait_for_spans(
            lambda s: span_tags(s).get("audit.missing") is True, timeout=60, trace_id=rid)
        tags = span_tags(span)
        assert tags["error"] is True  # status Error, as Jaeger shows it
        assert "missing_record" in tags["audit.flags"]
        parent = span["references"][0]
        assert parent["refType"] == "CHILD_OF" and parent["spanID"] == rid[:16]

    # nginx logged every request: its real stub_status counter agrees with the access log.
    nginx_ratio = 'audit_log_completeness_ratio{job="audit-guard",source="nginx",host="*"}'
    wait_until(lambda: prometheus.value(nginx_ratio) is not None, 60,
               "the nginx completeness ratio (stub_status) in Prometheus")
    assert prometheus.value(nginx_ratio) == 1.0
    assert not prometheus.value('audit_records_missing_total{source="nginx"}')
