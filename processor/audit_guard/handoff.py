"""What handing spans on can end in: the failure types and the exporter's shape.

The stages that hand spans on — the OTLP server, completeness's missing-record spans, `resend` —
depend on this, not on the exporter (audit_guard.otlp.exporter implements it). Retryable and
permanent failures are different types, as in the collector's exporterhelper:

- `Retryable`: nothing was lost and nothing may be acknowledged; try again later (the receiver
  answers UNAVAILABLE with RetryInfo and the collector keeps the data);
- `DownstreamRejected`: downstream refused spans for good and there was nowhere to keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["DownstreamRejected", "DownstreamUnavailable", "ExportOutcome", "Retryable",
           "SpanSink"]


class Retryable(Exception):
    """Nothing was lost; the caller must not acknowledge and should retry later."""


class DownstreamUnavailable(Retryable):
    """Downstream did not accept the spans in time; nothing was lost, the caller must retry."""


class DownstreamRejected(Exception):
    """Downstream refused spans for good and there is no spool to keep them: the caller must
    keep the data (never acknowledge it)."""

    def __init__(self, reason: str, spans: int) -> None:
        super().__init__(f"downstream refused {spans} span(s) for good: {reason}")
        self.reason = reason
        self.spans = spans


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    accepted: int  # spans downstream took
    spooled: int = 0  # spans downstream refused for good, kept in the dead-letter spool
    reason: str = ""  # why they were spooled: a gRPC code name (lower case) or partial_success


class SpanSink(Protocol):
    def export(self, request: bytes, span_count: int, deadline: float | None = None
               ) -> ExportOutcome:
        """Hand the spans on, or raise Retryable / DownstreamRejected."""
        ...
