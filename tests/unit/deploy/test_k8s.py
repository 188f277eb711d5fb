"""deploy/k8s/, checked statically (no cluster here): every manifest against the Kubernetes
API's JSON schemas, shipped offline by `kubernetes-validate` (strict: unknown fields are
errors); the objects' references to each other; and the collector configuration the DaemonSet
runs, through the built collector's `validate` with the DaemonSet's own environment."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from audit_guard.config import load_settings
from demo.procs import repo_root, tool_path

REPO = repo_root()
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
CONFIGS = [REPO / "collector-config" / "audit-guard.yaml",
           REPO / "collector-config" / "audit-guard-scaleout.yaml",
           K8S / "config" / "audit-guard-k8s.yaml"]


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [(K8S / name, doc) for name in kustomization["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for _, d in _documents()
                if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("path_doc", _documents(),
                         ids=lambda pd: f"{pd[0].name}:{pd[1]['kind']}/{pd[1]['metadata']['name']}")
def test_every_object_matches_the_api_schema(path_doc: tuple[Path, dict[str, Any]]) -> None:
    _, doc = path_doc
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_wrong_field() -> None:
    bad = yaml.safe_load(yaml.safe_dump(_one("StatefulSet")))
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_everything_is_in_one_namespace() -> None:
    namespace = _one("Namespace")["metadata"]["name"]
    for _, doc in _documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_processors_are_a_statefulset_behind_a_headless_service() -> None:
    sts, svc = _one("StatefulSet"), _one("Service")
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in svc["spec"]["ports"]:
        assert port["targetPort"] in named, port
    env = _env(container)
    assert env["AUDIT_GUARD_SERVER__LISTEN"].endswith(f":{named['otlp-grpc']}")
    assert env["AUDIT_GUARD_ADMIN__LISTEN"].endswith(f":{named['admin']}")
    # state on the pod's own volume
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["AUDIT_GUARD_RECONCILE__STATE_DIR"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"


def test_the_processor_environment_is_a_valid_configuration(monkeypatch) -> None:
    (container,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    for name, value in _env(container).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.error_join_unjoined == "drop"  # every pod gets every error-log event
    assert settings.reconcile.restart_hold_s == settings.reconcile.resend_hold_s


def test_the_processors_watch_the_ring_the_collector_routes_by() -> None:
    # Membership changes (docs/scale-out.md): each pod resolves the headless Service whose
    # EndpointSlices the collector's k8s resolver follows.
    sts, svc = _one("StatefulSet"), _one("Service")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
    assert _env(container)["AUDIT_GUARD_RECONCILE__MEMBERSHIP_DNS"] == (
        f"{name}.{ns}.svc.cluster.local")
    assert svc["spec"]["publishNotReadyAddresses"] is True  # DNS lists what the ring holds
    k8s = yaml.safe_load(CONFIGS[2].read_text())["exporters"]["load_balancing/processors"]
    assert k8s["resolver"]["k8s"]["service"] == f"{name}.{ns}"


def _collector() -> dict[str, Any]:
    (container,) = _one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_collector_runs_the_shipped_configs_from_its_configmap() -> None:
    container = _collector()
    configs = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--config=")]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert configs == [f"{mount['mountPath']}/{c.name}" for c in CONFIGS]
    # the ConfigMap is made from exactly these files (collector.yaml's header says how)
    header = (K8S / "collector.yaml").read_text()
    for config in CONFIGS:
        assert f"--from-file={config.relative_to(REPO)}" in header
    assert "--feature-gates=stanza.synchronousLogEmitter" in container["args"]


def test_one_error_log_exporter_per_processor_pod() -> None:
    sts = _one("StatefulSet")
    scaleout = yaml.safe_load(CONFIGS[1].read_text())
    exporters = scaleout["service"]["pipelines"]["logs/nginx_error"]["exporters"]
    replicas = sts["spec"]["replicas"]
    assert exporters == [f"otlp_grpc/processor_{n}" for n in range(replicas)]
    env = _env(_collector())
    svc, ns = sts["spec"]["serviceName"], sts["metadata"]["namespace"]
    for n in range(replicas):
        host = f"{sts['metadata']['name']}-{n}.{svc}.{ns}.svc.cluster.local:4327"
        assert env[f"AUDIT_GUARD_PROCESSOR_{n}_ENDPOINT"] == host


def test_the_ring_follows_the_headless_service() -> None:
    k8s = yaml.safe_load(CONFIGS[2].read_text())
    resolver = k8s["exporters"]["load_balancing/processors"]["resolver"]
    sts = _one("StatefulSet")
    assert resolver["static"] is None  # the scale-out overlay's static list is removed
    service = f"{sts['spec']['serviceName']}.{sts['metadata']['namespace']}"
    assert resolver["k8s"]["service"] == service
    role = _one("Role")
    assert {"get", "list", "watch"} <= set(role["rules"][0]["verbs"])
    assert role["rules"][0]["resources"] == ["endpointslices"]
    binding = _one("RoleBinding")
    assert binding["subjects"][0]["name"] == _one("DaemonSet")["spec"]["template"]["spec"][
        "serviceAccountName"]


def test_the_collector_sets_what_its_configs_read() -> None:
    read = {m for c in CONFIGS for line in c.read_text().splitlines()
            if not line.lstrip().startswith("#")
            for m in re.findall(r"\$\{env:([A-Z0-9_]+)", line)}
    unused_here = {"AUDIT_GUARD_PROCESSOR_ENDPOINT",  # the single-instance exporter, unused
                   "AUDIT_GUARD_EGRESS_ENDPOINT", "AUDIT_GUARD_TRACES_ENDPOINT"}  # loopback
    assert read - unused_here <= set(_env(_collector()))


def test_the_collector_config_validates_with_the_daemonset_env(tmp_path: Path) -> None:
    env = {**_env(_collector()), "AUDIT_GUARD_STORAGE_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(tool_path("otelcol-audit-guard")), "validate",
         *[a for c in CONFIGS for a in ("--config", str(c))]],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
