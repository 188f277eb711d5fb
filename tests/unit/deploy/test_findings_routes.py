"""The findings routes (collector-config/examples/findings-routes*.yaml) checked by the project's
real collector build: `validate` over the shipped config, as the files' headers say to run them.
The contrib file's exporters (elasticsearch, splunk_hec, clickhouse) are validated when the build
has them; when it does not, the file must fail on those alone and validate with them taken out."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo.procs import tool_path

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "collector-config" / "audit-guard.yaml"
EXAMPLES = REPO / "collector-config" / "examples"
CONTRIB = {"elasticsearch", "splunk_hec", "clickhouse"}


def otelcol(*args: str | Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUDIT_GUARD_STORAGE_DIR": str(tmp_path / "storage")}
    return subprocess.run([str(tool_path("otelcol-audit-guard")), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)


def exporter_types(tmp_path: Path) -> set[str]:
    listed = yaml.safe_load(otelcol("components", tmp_path=tmp_path).stdout)
    return {c["name"] for c in listed["exporters"]}


def test_the_shipped_config_writes_findings_to_a_rotated_json_lines_file() -> None:
    config: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
    assert config["service"]["pipelines"]["logs/egress"] == {
        "receivers": ["otlp/egress"], "processors": ["memory_limiter"],
        "exporters": ["file/findings"]}
    exporter = config["exporters"]["file/findings"]
    assert exporter["format"] == "json" and exporter["rotation"]["max_megabytes"] > 0
    assert "sending_queue" not in exporter  # answered only once written (see its comment)


def test_findings_routes_validate(tmp_path: Path) -> None:
    result = otelcol("validate", "--config", SHIPPED, "--config",
                     EXAMPLES / "findings-routes.yaml", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    routes = yaml.safe_load((EXAMPLES / "findings-routes.yaml").read_text())
    used = routes["service"]["pipelines"]["logs/egress"]["exporters"]
    assert used[0] == "file/findings"  # the file stays, the routes come beside it
    assert {e.split("/")[0] for e in used[1:]} == {"otlp_http", "otlp_grpc"}
    for name in used[1:]:  # every remote route queues on disk and never gives up
        exporter = routes["exporters"][name]
        assert exporter["sending_queue"]["storage"] == "file_storage"
        assert exporter["retry_on_failure"]["max_elapsed_time"] == 0


def test_contrib_routes_validate_where_the_build_has_them(tmp_path: Path) -> None:
    path = EXAMPLES / "findings-routes-contrib.yaml"
    missing = CONTRIB - exporter_types(tmp_path)
    result = otelcol("validate", "--config", SHIPPED, "--config", path, tmp_path=tmp_path)
    if not missing:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    assert any(f'unknown type: "{name}"' in result.stderr for name in missing), result.stderr
    # the rest of the file is right: without the exporters the build lacks, it validates
    routes = yaml.safe_load(path.read_text())
    kept = [e for e in routes["service"]["pipelines"]["logs/egress"]["exporters"]
            if e.split("/")[0] not in missing]
    routes["exporters"] = {k: v for k, v in routes["exporters"].items()
                           if k.split("/")[0] not in missing}
    routes["service"]["pipelines"]["logs/egress"]["exporters"] = kept
    rest = tmp_path / "rest.yaml"
    rest.write_text(yaml.safe_dump(routes))
    result = otelcol("validate", "--config", SHIPPED, "--config", rest, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
