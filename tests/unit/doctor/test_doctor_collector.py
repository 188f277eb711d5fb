"""audit-guard doctor: collector config checks on the shipped config and on broken variants.

Each variant is first accepted by the built collector's `validate`, so a finding is proven on a
config the collector would really run, not on YAML it would reject anyway.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit_guard.doctor.collector import check_collector
from audit_guard.doctor.findings import Level
from demo.procs import repo_root, tool_path

SHIPPED = repo_root() / "collector-config" / "audit-guard.yaml"
Cfg = dict[str, Any]


def _base() -> Cfg:
    return yaml.safe_load(SHIPPED.read_text())


def write_valid(cfg: Cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([str(tool_path("otelcol-audit-guard")), "validate", "--config",
                           str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return path


def test_shipped_config_has_no_fail_and_no_warn() -> None:
    found = check_collector([SHIPPED])
    assert found and {f.level for f in found} == {Level.OK}
    receivers = yaml.safe_load(SHIPPED.read_text())["receivers"]
    file_logs = [name for name in receivers if name.startswith("file_log/")]
    assert len([f for f in found if f.check == "collector.file_log_storage"]) == len(file_logs)


def _rename(cfg: Cfg) -> None:
    cfg["receivers"]["filelog/app"] = cfg["receivers"].pop("file_log/app")
    cfg["exporters"]["otlp/traces"] = cfg["exporters"].pop("otlp_grpc/traces")
    pipes = cfg["service"]["pipelines"]
    receivers = pipes["logs/audit"]["receivers"]
    receivers[receivers.index("file_log/app")] = "filelog/app"
    pipes["traces/egress"]["exporters"] = ["otlp/traces"]


def _no_recombine(cfg: Cfg) -> None:
    ops = cfg["receivers"]["file_log/containers"]["operators"]
    cfg["receivers"]["file_log/containers"]["operators"] = [
        o for o in ops if o["type"] == "container"]


VARIANTS: dict[str, tuple[Callable[[Cfg], None], str, Level]] = {
    "no_storage": (lambda c: c["receivers"]["file_log/app"].pop("storage"),
                   "collector.file_log_storage", Level.WARN),  # start_at: beginning
    "no_storage_end": (lambda c: (c["receivers"]["file_log/app"].pop("storage"),
                                  c["receivers"]["file_log/app"].pop("start_at")),
                       "collector.file_log_storage", Level.FAIL),
    "retry_off": (lambda c: c["exporters"]["otlp_grpc/processor"]["retry_on_failure"].update(
        enabled=False), "collector.exporter_retry", Level.FAIL),
    "retry_finite": (lambda c: c["exporters"]["otlp_grpc/processor"]["retry_on_failure"].pop(
        "max_elapsed_time"), "collector.exporter_retry", Level.WARN),
    "queue_in_memory": (lambda c: c["exporters"]["otlp_grpc/traces"]["sending_queue"].pop(
        "storage"), "collector.queue_storage", Level.WARN),
    "queue_rejects": (lambda c: c["exporters"]["otlp_grpc/traces"]["sending_queue"].pop(
        "block_on_overflow"), "collector.queue_overflow", Level.WARN),
    "small_lines": (lambda c: c["receivers"]["file_log/nginx_access"].update(
        max_log_size="16KiB"), "collector.max_log_size", Level.WARN),
    "no_recombine": (_no_recombine, "collector.docker_recombine", Level.WARN),
    "deprecated": (_rename, "collector.deprecated_name", Level.WARN),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_broken_variant_is_found(name: str, tmp_path: Path) -> None:
    change, check, level = VARIANTS[name]
    cfg = copy.deepcopy(_base())
    change(cfg)
    found = check_collector([write_valid(cfg, tmp_path / f"{name}.yaml")])
    flagged = [f.level for f in found if f.check == check and f.level is not Level.OK]
    # One finding per broken component (the rename variant renames two).
    assert flagged == [level] * (2 if name == "deprecated" else 1)
    assert all(f.evidence.line for f in found)


def test_files_are_merged_and_evidence_points_at_the_overriding_file(tmp_path: Path) -> None:
    override = tmp_path / "override.yaml"
    override.write_text("exporters:\n  otlp_grpc/processor:\n    retry_on_failure:\n"
                        "      enabled: false\n")
    found = check_collector([SHIPPED, override])
    bad = [f for f in found if f.level is Level.FAIL]
    assert len(bad) == 1 and bad[0].check == "collector.exporter_retry"
    assert (bad[0].evidence.file, bad[0].evidence.line) == (str(override), 4)
    # The merge kept the rest of the exporter (its persistent queue) from the first file.
    assert not [f for f in found if f.check == "collector.queue_storage"]
