"""audit-guard processor: turns audit log records into flagged OpenTelemetry spans."""

__version__ = "0.1.0"
