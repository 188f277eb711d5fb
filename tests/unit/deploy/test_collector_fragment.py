"""The merge-safe collector fragment for an existing collector (issue #16):
collector-config/audit-guard-fragment.yaml and its -legacy variant.

- the checked-in fragments are what scripts/collector_fragment.py writes from the standalone
  file (one source of truth), and the generator refuses a reference it cannot rewrite;
- every component and pipeline id is prefixed; no `service.extensions`, no `service.telemetry`;
- in the built collector, a realistic user config (their own `batch`, `memory_limiter`,
  `health_check`, `file_storage`, unnamed `file_log` and `otlp_grpc`, pipelines, a telemetry
  reader) + the fragment passes `validate`, and the collector's effective config (`print-config`)
  holds the user's part exactly as without the fragment — merged in either order. The standalone
  file, merged the same way, changes it (the reason the fragment exists);
- the legacy variant's effective config is the fragment's under the old names (the keys it
  drops are the defaults);
- without the documented extension step the collector refuses to start;
- user config + fragment run: an access-log line reaches the processor stand-in and only it,
  the user's own log line reaches only the user's backend, and the fragment's receivers count in
  the user's own internal metrics.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from demo.backends import COLLECTOR_FEATURE_GATES, CollectorEndpoints
from demo.procs import ManagedProcess, free_port, http_ok, tool_path, wait_until
from tests.e2e.test_collector_config import FakeProcessor, metric_value, scrape
from tests.support.tls_certs import make_pki

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "collector-config"
FRAGMENT = CONFIG_DIR / "audit-guard-fragment.yaml"
LEGACY = CONFIG_DIR / "audit-guard-fragment-legacy.yaml"
SECURE_FRAGMENT = CONFIG_DIR / "audit-guard-fragment-secure.yaml"
STANDALONE = CONFIG_DIR / "audit-guard.yaml"
SECTIONS = ("extensions", "receivers", "processors", "exporters", "connectors")
OUR_EXTENSIONS = ["file_storage/audit_guard", "health_check/audit_guard"]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "collector_fragment", REPO / "scripts" / "collector_fragment.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


# ---------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("name", [FRAGMENT.name, LEGACY.name, SECURE_FRAGMENT.name])
def test_checked_in_fragment_is_what_the_generator_writes(name: str) -> None:
    expected = GENERATOR.fragments()[name]
    assert (CONFIG_DIR / name).read_text() == expected, (
        f"collector-config/{name} differs from what scripts/collector_fragment.py writes from "
        "audit-guard.yaml: run `.venv/bin/python scripts/collector_fragment.py` and commit it "
        "(never edit a fragment by hand)")


def test_generator_check_reports_drift_and_rewrites(tmp_path: Path) -> None:
    (tmp_path / STANDALONE.name).write_text(STANDALONE.read_text())
    secure = CONFIG_DIR / "audit-guard-secure.yaml"
    (tmp_path / secure.name).write_text(secure.read_text())
    assert GENERATOR.main(["--check", "--config-dir", str(tmp_path)]) == 1  # none written yet
    assert GENERATOR.main(["--config-dir", str(tmp_path)]) == 0
    assert GENERATOR.main(["--check", "--config-dir", str(tmp_path)]) == 0
    assert (tmp_path / FRAGMENT.name).read_text() == FRAGMENT.read_text()
    assert (tmp_path / SECURE_FRAGMENT.name).read_text() == SECURE_FRAGMENT.read_text()


def test_generator_refuses_a_reference_it_cannot_rewrite() -> None:
    """A bare id in a spot the text rewrite does not cover (here a flow list) must fail the
    generation, not ship a fragment pointing at the user's `file_storage`."""
    text = STANDALONE.read_text().replace(
        "    storage: file_storage\n", "    storage: file_storage\n    x_refs: [file_storage]\n", 1)
    with pytest.raises(ValueError, match="does not parse to the rewritten data"):
        GENERATOR.render(GENERATOR.VARIANTS[0], text)


def test_every_id_is_prefixed_and_no_service_list_is_set() -> None:
    fragment, standalone = load(FRAGMENT), load(STANDALONE)
    for section in SECTIONS:
        ours = list(fragment.get(section) or {})
        assert len(ours) == len(standalone.get(section) or {}), section
        assert all("/audit_guard" in cid for cid in ours), (section, ours)
    assert set(fragment["service"]) == {"pipelines"}  # no extensions, no telemetry
    assert all(p.split("/")[1].startswith("audit_guard") for p in fragment["service"]["pipelines"])
    assert "file_log/audit_guard_nginx_access" in fragment["receivers"]
    assert "otlp_grpc/audit_guard_processor" in fragment["exporters"]
    assert "file_storage/audit_guard" in fragment["extensions"]
    # the documented step names exactly the extensions the fragment defines
    assert sorted(fragment["extensions"]) == sorted(OUR_EXTENSIONS)
    assert "extensions: [health_check, file_storage, " + ", ".join(OUR_EXTENSIONS) + "]" \
        in FRAGMENT.read_text()


def test_legacy_variant_differs_only_by_names_and_default_keys() -> None:
    fragment, legacy = load(FRAGMENT), load(LEGACY)
    assert not any(cid.startswith(("file_log/", "otlp_grpc/"))
                   for section in SECTIONS for cid in legacy.get(section) or {})
    renamed = yaml.safe_load(yaml.safe_dump(legacy).replace("filelog/", "file_log/")
                             .replace("otlp/audit_guard_processor",
                                      "otlp_grpc/audit_guard_processor")
                             .replace("otlp/audit_guard_traces", "otlp_grpc/audit_guard_traces"))
    for receiver in fragment["receivers"].values():
        # dropped only where the fragment sets what older releases always do
        assert receiver.pop("max_log_size_behavior", "split") == "split"
        assert receiver.pop("on_truncate", "ignore") == "ignore"
    assert renamed == fragment


# ------------------------------------------------------------------ in the built collector


def user_config(tmp_path: Path, *, with_our_extensions: bool = True) -> dict[str, Any]:
    """An operator's own collector: app traces to debug, app logs (OTLP and a file) to their
    log backend, with the common ids the standalone file also uses — and, after step 1 of the
    fragment's header, our two extensions appended to their list."""
    config: dict[str, Any] = {
        "extensions": {
            "health_check": {"endpoint": f"127.0.0.1:{free_port()}"},
            "file_storage": {"directory": str(tmp_path / "user-storage"),
                             "create_directory": True},
            "pprof": {"endpoint": f"127.0.0.1:{free_port()}"},
        },
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"}}},
            "file_log": {"include": [str(tmp_path / "user-app.log")], "start_at": "beginning",
                         "storage": "file_storage"},
        },
        "processors": {
            "memory_limiter": {"check_interval": "2s", "limit_mib": 400, "spike_limit_mib": 100},
            "batch": {"timeout": "200ms", "send_batch_size": 512},
        },
        "exporters": {
            "debug": {"verbosity": "basic"},
            "otlp_grpc": {"endpoint": f"127.0.0.1:{free_port()}", "tls": {"insecure": True}},
        },
        "service": {
            "extensions": ["health_check", "file_storage", "pprof"],
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["memory_limiter", "batch"],
                           "exporters": ["debug"]},
                "logs": {"receivers": ["otlp", "file_log"],
                         "processors": ["memory_limiter", "batch"], "exporters": ["otlp_grpc"]},
            },
            "telemetry": {
                "logs": {"level": "info"},
                "metrics": {"level": "detailed", "readers": [{"pull": {"exporter": {
                    "prometheus": {"host": "127.0.0.1", "port": free_port()}}}}]},
            },
        },
    }
    if with_our_extensions:
        config["service"]["extensions"] += OUR_EXTENSIONS
    return config


def write(tmp_path: Path, name: str, config: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fragment_env(tmp_path: Path, processor_port: int | None = None) -> dict[str, str]:
    """The env vars the fragment reads: every path under tmp_path, every port free."""
    return CollectorEndpoints(
        egress_port=free_port(), health_port=free_port(), metrics_port=free_port(),
        storage_dir=tmp_path / "audit-guard-storage", access_log=tmp_path / "access.log",
        processor_endpoint=f"127.0.0.1:{processor_port or free_port()}",
        traces_endpoint=f"127.0.0.1:{free_port()}", vts_target=f"127.0.0.1:{free_port()}",
    ).env()


def otelcol(*args: str | Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool_path("otelcol-audit-guard")), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=60)


def effective(*configs: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The collector's own merge of `configs`, defaults filled in (`print-config` validates)."""
    result = otelcol("print-config", *[a for c in configs for a in ("--config", c)], env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def users_part(config: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """`config` without the components, pipelines and extension entries `ours` adds."""
    out = copy.deepcopy(config)
    for section in SECTIONS:
        for cid in ours.get(section) or {}:
            out.get(section, {}).pop(cid, None)
    for pid in ours["service"]["pipelines"]:
        out["service"]["pipelines"].pop(pid, None)
    out["service"]["extensions"] = [e for e in out["service"]["extensions"]
                                    if e not in (ours.get("extensions") or {})]
    return out


@pytest.mark.e2e
def test_fragment_leaves_the_users_config_as_it_was(tmp_path: Path) -> None:
    user = user_config(tmp_path)
    before = copy.deepcopy(user)
    before["service"]["extensions"] = before["service"]["extensions"][:-2]  # before step 1
    user_path, before_path = write(tmp_path, "user.yaml", user), write(tmp_path, "before.yaml",
                                                                        before)
    env = fragment_env(tmp_path)
    result = otelcol("validate", "--config", user_path, "--config", FRAGMENT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    alone = effective(before_path)
    merged = effective(user_path, FRAGMENT, env=env)
    assert users_part(merged, load(FRAGMENT)) == alone
    assert merged["service"]["extensions"] == alone["service"]["extensions"] + OUR_EXTENSIONS
    assert set(merged["service"]["pipelines"]) - set(alone["service"]["pipelines"]) == {
        "logs/audit_guard", "metrics/audit_guard_nginx", "traces/audit_guard_egress",
        "logs/audit_guard_egress"}
    # the order of the --config files does not matter: no key is set by both
    assert effective(FRAGMENT, user_path, env=env) == merged


@pytest.mark.e2e
def test_the_standalone_file_would_change_the_users_config(tmp_path: Path) -> None:
    """Why the fragment exists, and proof the comparison above can see a change: merged the
    same way, the standalone file rewrites the user's memory_limiter and health_check and
    replaces their extension list and metric readers."""
    user_path = write(tmp_path, "user.yaml", user_config(tmp_path, with_our_extensions=False))
    alone = effective(user_path)
    merged = effective(user_path, STANDALONE, env=fragment_env(tmp_path))
    # same ids, so the maps merged: the user's components now carry the standalone's settings
    assert merged["processors"]["memory_limiter"] != alone["processors"]["memory_limiter"]
    assert merged["extensions"]["health_check"] != alone["extensions"]["health_check"]
    assert "pprof" not in merged["service"]["extensions"]  # the user's list was replaced
    assert merged["service"]["telemetry"]["metrics"]["readers"] != \
        alone["service"]["telemetry"]["metrics"]["readers"]


@pytest.mark.e2e
def test_legacy_variant_is_the_fragment_under_the_old_names(tmp_path: Path) -> None:
    """In 0.160.0 the old names are deprecated aliases: the legacy variant's effective config
    is the fragment's once the ids are mapped back — the keys it leaves out are the defaults."""
    user_path = write(tmp_path, "user.yaml", user_config(tmp_path))
    env = fragment_env(tmp_path)
    result = otelcol("validate", "--config", user_path, "--config", LEGACY, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    legacy_text = yaml.safe_dump(effective(user_path, LEGACY, env=env))
    renamed = (legacy_text.replace("filelog/", "file_log/")
               .replace("otlp/audit_guard_processor", "otlp_grpc/audit_guard_processor")
               .replace("otlp/audit_guard_traces", "otlp_grpc/audit_guard_traces"))
    assert yaml.safe_load(renamed) == effective(user_path, FRAGMENT, env=env)


@pytest.mark.e2e
def test_without_the_extension_step_the_collector_refuses_to_start(tmp_path: Path) -> None:
    user_path = write(tmp_path, "user.yaml", user_config(tmp_path, with_our_extensions=False))
    env = fragment_env(tmp_path)
    assert otelcol("validate", "--config", user_path, "--config", FRAGMENT,
                   env=env).returncode == 0  # validate cannot see it ...
    started = time.monotonic()
    result = otelcol("--config", user_path, "--config", FRAGMENT, env=env)
    assert result.returncode != 0  # ... the start does, at once, and says so
    assert "no storage client extension found" in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.e2e
def test_fragment_and_user_config_run_side_by_side(tmp_path: Path) -> None:
    """One collector, both pipelines: the access-log line reaches the processor stand-in and
    only it; the user's own log line reaches only the user's backend."""
    access_line = '{"status":200,"request_id":"a1b2c3d4e5f60718293a4b5c6d7e8f90"}'
    user_line = "user app: payment accepted"
    with FakeProcessor(free_port()) as processor, FakeProcessor(free_port()) as users_backend:
        user = user_config(tmp_path)
        user["exporters"]["otlp_grpc"]["endpoint"] = f"127.0.0.1:{users_backend.port}"
        user_path = write(tmp_path, "user.yaml", user)
        env = fragment_env(tmp_path, processor.port)
        (tmp_path / "access.log").write_text(access_line + "\n")
        (tmp_path / "user-app.log").write_text(user_line + "\n")
        proc = ManagedProcess(
            "collector", [tool_path("otelcol-audit-guard"), "--config", user_path,
                          "--config", FRAGMENT,
                          f"--feature-gates={','.join(COLLECTOR_FEATURE_GATES)}"],
            log_dir=tmp_path, env=env, cwd=tmp_path).start()
        users_health = f"http://{user['extensions']['health_check']['endpoint']}/"
        ours_health = f"http://{env['AUDIT_GUARD_COLLECTOR_HEALTH']}/"
        try:
            proc.wait_ready(lambda: http_ok(users_health) and http_ok(ours_health), 60)
            wait_until(lambda: processor.bodies() and users_backend.bodies(), 30,
                       "both lines at their backends")
            time.sleep(1)  # a line sent to the wrong pipeline would show up by now
            assert processor.bodies() == [access_line]
            assert processor.resources[0]["audit.source"] == "nginx_access"
            assert users_backend.bodies() == [user_line]
            port = user["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"][
                "prometheus"]["port"]
            accepted = metric_value(scrape(f"http://127.0.0.1:{port}/metrics"),
                                    "otelcol_receiver_accepted_log_records",
                                    receiver="file_log/audit_guard_nginx_access")
            assert accepted == 1  # the fragment's counters are in the user's own telemetry
            assert (tmp_path / "audit-guard-storage"
                    / "receiver_filelog_audit_guard_nginx_access").exists()
        finally:
            proc.stop()


@pytest.mark.e2e
def test_secure_fragment_secures_both_hops_and_leaves_the_users_config(tmp_path: Path) -> None:
    """The secure fragment merged after the fragment: `validate` passes once the two token
    extensions are in the user's list; our two hops get mutual TLS and a bearer token; the
    user's own part is what it was."""
    pki = make_pki(tmp_path / "pki")
    user = user_config(tmp_path)
    user["service"]["extensions"] += ["bearertokenauth/audit_guard_processor",
                                      "bearertokenauth/audit_guard_egress"]
    user_path = write(tmp_path, "user.yaml", user)
    before = copy.deepcopy(user)
    before["service"]["extensions"] = before["service"]["extensions"][:-4]  # before step 1
    alone = effective(write(tmp_path, "before.yaml", before))
    env = {**fragment_env(tmp_path), "AUDIT_GUARD_PROCESSOR_TOKEN": "p-token",
           "AUDIT_GUARD_EGRESS_TOKEN": "e-token", "AUDIT_GUARD_TLS_CA": str(pki.ca),
           "AUDIT_GUARD_COLLECTOR_TLS_CERT": str(pki.server_cert),
           "AUDIT_GUARD_COLLECTOR_TLS_KEY": str(pki.server_key),
           "AUDIT_GUARD_PROCESSOR_TLS_NAME": "audit-guard"}
    result = otelcol("validate", "--config", user_path, "--config", FRAGMENT,
                     "--config", SECURE_FRAGMENT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    merged = effective(user_path, FRAGMENT, SECURE_FRAGMENT, env=env)
    to_processor = merged["exporters"]["otlp_grpc/audit_guard_processor"]
    assert to_processor["auth"]["authenticator"] == "bearertokenauth/audit_guard_processor"
    assert to_processor["tls"]["ca_file"] == str(pki.ca)
    assert to_processor["tls"]["cert_file"] == str(pki.server_cert)  # mutual TLS
    egress = merged["receivers"]["otlp/audit_guard_egress"]["protocols"]["grpc"]
    assert egress["auth"]["authenticator"] == "bearertokenauth/audit_guard_egress"
    assert egress["tls"]["client_ca_file"] == str(pki.ca)
    ours = load(FRAGMENT)
    ours["extensions"] |= load(SECURE_FRAGMENT)["extensions"]
    assert users_part(merged, ours) == alone
    # left out of the user's list, the collector refuses at start (an unknown authenticator)
    without = copy.deepcopy(user)
    without["service"]["extensions"] = without["service"]["extensions"][:-2]
    without_path = write(tmp_path, "without.yaml", without)
    result = otelcol("--config", without_path, "--config", FRAGMENT, "--config", SECURE_FRAGMENT,
                     env=env)
    assert result.returncode != 0
    assert "bearertokenauth/audit_guard" in result.stderr
