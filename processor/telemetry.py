"""audit-guard's own counters, declared in one place.

A thread-safe in-process table for now; the completeness work exports it with the
OpenTelemetry SDK (OTLP and Prometheus /metrics). Counting a name not declared here is a bug.
"""

from __future__ import annotations

import threading

__all__ = ["COUNTERS", "Telemetry"]

COUNTERS: dict[str, str] = {
    "audit_records_total": "audit records received and processed",
    "audit_spans_exported_total": "spans accepted downstream",
    "audit_spans_dropped_total": "spans permanently rejected downstream (never retried)",
    "audit_export_unavailable_total": "Export calls answered UNAVAILABLE: downstream not reachable",
    "audit_export_backpressure_total": "Export calls answered UNAVAILABLE: in-flight limit hit",
    "audit_metrics_received_total": "metrics received from the collector",
}


class Telemetry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount  # KeyError on an undeclared name, on purpose

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
