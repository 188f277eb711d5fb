"""`make bench-chain` (scripts/bench_chain.py, issue #12) cannot rot: a short run of the real
chain — collector, one and then two `audit-guard serve`, the recording backend — delivers every
record and prints both rows of the table and the ratio. Its figures are not checked (5,000
records are mostly start-up); `missing_report` is, since it decides the exit status.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from demo.procs import repo_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SCRIPT = repo_root() / "scripts" / "bench_chain.py"
# instances, records/s, wall s, collector µs/rec, processor µs per own record (one per instance,
# "·" between), processors µs/rec, backend µs/rec, shares ("50.1 % · 49.9 %"), others' cores.
ROW = re.compile(r"^\s+(?P<n>[12])\s+(?P<rate>[\d,]+)\s+[\d.]+\s+(?P<collector>[\d.]+)\s+"
                 r"(?P<each>[\d.]+(?: · [\d.]+)*)\s+[\d.]+\s+[\d.]+\s+"
                 r"(?P<shares>[\d.]+ %(?: · [\d.]+ %)*)\s+-?[\d.]+$")


def _load_script():  # noqa: ANN202 - the script as a module
    spec = importlib.util.spec_from_file_location("bench_chain", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_short_run_delivers_every_record_and_prints_both_rows(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--records", "5000", "--workdir", str(tmp_path),
         "--max-idle", "60"],
        capture_output=True, text=True, timeout=220, cwd=repo_root())
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    rows = [m for m in map(ROW.match, done.stdout.splitlines()) if m]
    assert [m["n"] for m in rows] == ["1", "2"], done.stdout
    one, two = rows
    assert len(one["each"].split(" · ")) == 1 and one["shares"] == "100.0 %"
    shares = [float(s.removesuffix(" %")) for s in two["shares"].split(" · ")]
    assert len(shares) == 2 and all(s > 0 for s in shares), two["shares"]
    assert all(int(m["rate"].replace(",", "")) > 0 for m in rows)
    assert re.search(r"^ratio two/one .*: end to end [\d.]+× the records/s; CPU per record "
                     r"\(collector \+ processors\) [\d.]+×$", done.stdout, re.MULTILINE)


def test_a_missing_record_is_reported_with_the_counts() -> None:
    missing_report = _load_script().missing_report
    written = {f"{i:032x}" for i in range(5)}
    assert missing_report(written, written | {"f" * 32}) is None
    report = missing_report(written, sorted(written)[1:])
    assert report is not None
    assert "5 records written, 4 delivered" in report and "1 missing" in report
    assert f"{0:032x}" in report
