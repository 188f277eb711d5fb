#!/usr/bin/env python3
"""`make faults`: the fault matrix (tests/support/faults/) — the real chain on loopback, one fault
per
row; prints the table and exits 1 when any row lost or rewrote a record.

    make faults                          every row (~25 min on 2 cores)
    make faults ARGS="--only kill-collector,rotate-rename"
    make faults ARGS=--list              the rows
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.faults.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
