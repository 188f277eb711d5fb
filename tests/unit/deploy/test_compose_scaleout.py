"""compose.yaml's `scaleout` profile (docs/scale-out.md), checked statically like the rest of
the file (tests/unit/deploy/test_compose.py): compose accepts it, the second processor has its
own state and status port, and the scale-out collector's configs pass the built collector's
`validate` with the environment compose gives it, wired to both processors."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import yaml

from demo.procs import repo_root, tool_path
from tests.support.observability_files import run_promtool
from tests.unit.deploy.test_compose import (
    clean_env,
    command,
    config_env_names,
    environment,
    hostport,
    mounts,
    run_compose,
)

REPO = repo_root()


def _model(*profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    flags = [a for p in profiles for a in ("--profile", p)]
    result = run_compose(*flags, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_the_profile_adds_a_processor_and_the_routing_collector() -> None:
    default, scaleout = _model()["services"], _model("scaleout")["services"]
    added = {"processor-2", "collector-scaleout", "prometheus-scaleout"}
    assert not added & set(default)
    assert set(scaleout) - set(default) == added


def test_the_second_processor_has_its_own_state_and_port() -> None:
    services = _model("scaleout")["services"]
    first, second = services["processor"], services["processor-2"]
    assert second["build"] == first["build"] and second["healthcheck"] == first["healthcheck"]
    volumes = {m.target: m.source for name in ("processor", "processor-2")
               for m in mounts(services[name]) if m.source.endswith("state")}
    assert len(volumes) == 1  # same path inside ...
    state = {m.source for name in ("processor", "processor-2") for m in mounts(services[name])}
    assert {"processor-state", "processor-2-state"} <= state  # ... a volume each
    assert environment(second)["AUDIT_GUARD_ERROR_JOIN_UNJOINED"] == "drop"
    assert environment(first)["AUDIT_GUARD_ERROR_JOIN_UNJOINED"] == "report"  # one instance
    asked = _model("scaleout", env={"AUDIT_GUARD_ERROR_JOIN_UNJOINED": "drop"})["services"]
    assert environment(asked["processor"])["AUDIT_GUARD_ERROR_JOIN_UNJOINED"] == "drop"


def test_the_routing_collector_validates_with_its_compose_env() -> None:
    services = _model("scaleout")["services"]
    svc = services["collector-scaleout"]
    cmd = command(svc)
    by_target = {m.target: m for m in mounts(svc) if m.type == "bind"}
    configs = [by_target[cmd[i + 1]].host_path() for i, a in enumerate(cmd) if a == "--config"]
    assert configs == [REPO / "collector-config" / "audit-guard.yaml",
                       REPO / "collector-config" / "audit-guard-scaleout.yaml"]
    env = environment(svc)
    names = set().union(*(config_env_names(c) for c in configs))
    assert names - {"AUDIT_GUARD_PROCESSOR_ENDPOINT"} <= set(env)
    # each instance by its compose name and OTLP port
    for n, name in enumerate(("processor", "processor-2")):
        host, port = hostport(env[f"AUDIT_GUARD_PROCESSOR_{n}_ENDPOINT"])
        listen = environment(services[name])["AUDIT_GUARD_SERVER__LISTEN"]
        assert (host, port) == (name, hostport(listen)[1])
        assert svc["depends_on"][name]["condition"] == "service_healthy"
    result = subprocess.run(
        [str(tool_path("otelcol-audit-guard")), "validate",
         *[a for c in configs for a in ("--config", str(c))]],
        capture_output=True, text=True, env={**clean_env(names), **env}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_replaces_the_single_instance_collector() -> None:
    """Same storage (its read offsets carry over) and the same host ports: both at once fail to
    start instead of reading the same logs twice into one bbolt file."""
    services = _model("scaleout")["services"]
    single, routing = services["collector"], services["collector-scaleout"]
    assert {m.source for m in mounts(single) if m.type == "volume"} == {
        m.source for m in mounts(routing) if m.type == "volume"}
    assert single["ports"] == routing["ports"]


def test_its_prometheus_scrapes_every_processor_and_nginx_vts() -> None:
    """The zone rules of alerts.yml compare nginx's VTS counters with the SUM over the
    processors (docs/scale-out.md): that Prometheus must scrape each instance's admin port and
    nginx's status port, which it reaches over the `scrape` network."""
    services = _model("scaleout")["services"]
    svc = services["prometheus-scaleout"]
    binds = {m.target: m for m in mounts(svc) if m.type == "bind"}
    config_path = binds["/etc/prometheus/prometheus.yml"].host_path()
    assert config_path == REPO / "otel" / "prometheus" / "prometheus-scaleout.yml"
    assert binds["/etc/prometheus/alerts.yml"].host_path() == (
        REPO / "otel" / "prometheus" / "alerts.yml")
    assert set(svc["networks"]) == {"audit", "scrape"}
    assert set(svc["networks"]) >= set(services["nginx"]["networks"]) & {"scrape"}
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: [t for sc in job["static_configs"] for t in sc["targets"]]
               for name, job in jobs.items()}
    assert sorted(targets["audit-guard"]) == sorted(
        f"{name}:{hostport(environment(services[name])['AUDIT_GUARD_ADMIN__LISTEN'])[1]}"
        for name in ("processor", "processor-2"))
    assert targets["nginx_vts"] == ["nginx:8081"]  # the status server of nginx.conf
    assert jobs["nginx_vts"]["metrics_path"] == "/status/format/prometheus"
    assert targets["otelcol"] == ["collector-scaleout:8888"]
    assert config["rule_files"] == ["alerts.yml"]
    result = run_promtool("check", "config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
