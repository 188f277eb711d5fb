"""Ingest lag: the time between an app writing a record and the container runtime reading it.

Docker stamps each line with the time its daemon read it; the app stamps its own time. A gap
above the threshold (block-buffered stdout, a stalled pipe) flags the record `delayed`; the
span carries `audit.ingest_lag_ms` whenever both times are known.
"""

from __future__ import annotations

from .. import flags
from ..record import RecordBatch

__all__ = ["check_lag"]


def check_lag(batch: RecordBatch, threshold_ns: int) -> None:
    observed = batch.observed_time_unix_nano
    if not any(observed):
        return
    for i, (seen, logged) in enumerate(zip(observed, batch.time_unix_nano, strict=True)):
        if seen is not None and logged is not None and seen - logged > threshold_ns:
            batch.add_flag(i, flags.DELAYED)
