"""The fault matrix's short subset (the full one is `make faults`): the real chain on loopback
(nginx, collector with the shipped config, `audit-guard serve`, a recording OTLP backend in its
own process), ~5,000 requests, four cheap faults. Every row must lose and rewrite nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import format_table, run_rows
from tests.faults.scenarios import short_matrix

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

RATE = 85.0  # 4 rows x 15 s x 85/s ≈ 5,100 requests


def test_short_fault_matrix_loses_and_rewrites_nothing(tmp_path: Path) -> None:
    results = run_rows(short_matrix(), tmp_path, RATE, seed=11, keep=True,
                       quiet_s=25, idle_queues_s=10, max_drain_s=90)
    report = format_table(results) + "\n" + "\n".join(
        f"  {r.name}: {note}" for r in results for note in ([r.error] if r.error else [])
        + r.notes)
    assert sum(r.sent for r in results) >= 4500, report
    for r in results:
        assert r.error is None, report
        # Every answered request is a line nginx wrote (plus the poisoned lines).
        assert r.written >= r.sent, report
        assert r.lost == 0 and r.rewritten == 0, report
