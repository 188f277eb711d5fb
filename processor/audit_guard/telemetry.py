"""audit-guard's own metrics, declared in one place: name, kind, unit, description, labels.

`Telemetry` records them with the OpenTelemetry SDK when given a MeterProvider (`serve` gives it
one with a Prometheus reader on the admin port and, if configured, an OTLP exporter) and always
keeps an in-process total per name, which tests and the shutdown log read. Recording a name
that is not declared here is a bug and raises. Pipeline findings are counted per batch from a
`BatchStats`, never per record.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from . import flags
from .flagged import FLAGGED_PER_BATCH, FlaggedRows, flagged_rows
from .record import RecordBatch

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

    from .rules import RuleSet

__all__ = [
    "FLAGGED_PER_BATCH", "INSTRUMENTS", "LAG_BUCKETS_S", "BatchStats", "Instrument", "Telemetry",
]


@dataclass(frozen=True)
class Instrument:
    name: str  # the Prometheus name (counters end in _total)
    kind: str  # counter | histogram | gauge
    unit: str
    description: str
    labels: tuple[str, ...] = ()


INSTRUMENTS: dict[str, Instrument] = {i.name: i for i in (
    Instrument("audit_records_total", "counter", "{record}",
               "audit records received and processed", ("source",)),
    Instrument("audit_spans_exported_total", "counter", "{span}", "spans accepted downstream"),
    Instrument("audit_records_truncated_total", "counter", "{record}",
               "records found cut short", ("source", "reason")),
    Instrument("audit_field_violations_total", "counter", "{violation}",
               "missing or invalid audit fields", ("field",)),
    Instrument("audit_records_delayed_total", "counter", "{record}",
               "records read later than lag_threshold_s after they were written", ("source",)),
    Instrument("audit_error_join_ambiguous_total", "counter", "{event}",
               "nginx error-log events whose request was one of several as likely (same "
               "connection, request line and second, not told apart by $connection_requests): "
               "the last one logged was flagged, marked audit.error_join.ambiguous=true"),
    Instrument("audit_error_events_total", "counter", "{event}",
               "nginx error-log events that mean a cut, by outcome: received, joined (flagged "
               "an access record here), unjoined (reported as a span of its own), "
               "dropped_unjoined (error_join_unjoined=drop: joined by the instance holding "
               "the access record, if any; across instances, received minus the sum of joined "
               "is what no instance joined)", ("outcome",)),
    Instrument("audit_records_duplicate_total", "counter", "{record}",
               "records seen again (same source, trace and span id)", ("source",)),
    Instrument("audit_records_malformed_total", "counter", "{record}",
               "records that are not of their format at all (exported flagged)", ("source",)),
    Instrument("audit_rule_matches_total", "counter", "{record}",
               "records matched by an audit rule", ("rule", "severity")),
    Instrument("audit_ingest_lag_seconds", "histogram", "s",
               "time from the app writing a record to the container runtime reading it",
               ("source",)),
    Instrument("audit_export_duration_seconds", "histogram", "s",
               "time to hand one batch of spans downstream, retries included"),
    Instrument("audit_export_unavailable_total", "counter", "{call}",
               "Export calls answered UNAVAILABLE because downstream did not accept in time "
               "(the collector keeps and retries the data)"),
    Instrument("audit_export_backpressure_total", "counter", "{call}",
               "Export calls answered UNAVAILABLE because the in-flight limit was reached"),
    Instrument("audit_metrics_received_total", "counter", "{metric}",
               "metrics received from the collector (nginx VTS / stub_status)"),
    Instrument("audit_records_missing_total", "counter", "{record}",
               "records that should exist but never arrived: source=app, audited Nginx "
               "requests with no app record in the window (each also a missing_record span); "
               "source=nginx, requests nginx counted (VTS / stub_status) beyond the access-log "
               "records received", ("source",)),
    Instrument("audit_nginx_records_by_zone_total", "counter", "{record}",
               "Nginx access-log records received per server zone ($server_name, else the "
               "Host; \"-\" when neither), each counted once (not again when re-sent); at "
               "most reconcile.zone_counts_max zones, the rest as zone=\"other\". Summed over "
               "instances and compared with nginx's VTS counters by the Prometheus rule "
               "zone:audit_nginx_records_shortfall:increase5m (docs/scale-out.md)", ("zone",)),
    Instrument("audit_missing_suppressed_total", "counter", "{request}",
               "requests whose missing_record was not reported: reason=membership_change, "
               "the Nginx record was logged within reconcile.membership_grace_s of a "
               "membership change (its app record may have gone to another instance)",
               ("reason",)),
    Instrument("audit_membership_changes_total", "counter", "{change}",
               "membership changes of the scale-out ring seen by this instance: trigger=dns "
               "(reconcile.membership_dns resolved to another set of addresses) or api (POST "
               "/api/membership-change)", ("trigger",)),
    Instrument("audit_records_late_total", "counter", "{record}",
               "records that arrived after their request was reported missing (counted once)",
               ("source",)),
    Instrument("audit_records_unprocessable_total", "counter", "{record}",
               "records the pipeline failed on (a bug): exported as invalid_field:record spans "
               "that keep the raw text, never dropped"),
    Instrument("audit_state_write_errors_total", "counter", "{write}",
               "writes of the reconcile state that failed (disk full, I/O error): the Export "
               "was answered UNAVAILABLE and is retried by the collector"),
    Instrument("audit_state_corrupt_total", "counter", "{file}",
               "state files found unreadable at start, moved aside (the service started "
               "afresh)"),
    Instrument("audit_reconcile_evicted_total", "counter", "{request}",
               "pending requests dropped to stay within reconcile.max_pending (never checked)"),
    Instrument("audit_counter_scrape_errors_total", "counter", "{scrape}",
               "failed reads of an nginx status endpoint (reconcile.counter_targets)",
               ("target",)),
    Instrument("audit_reconcile_pending", "gauge", "{request}",
               "audited requests waiting for their app record"),
    Instrument("audit_log_completeness_ratio", "gauge", "1",
               "share of the requests that should have an audit record which got one, over "
               "reconcile.completeness_span_s (source=nginx: access log vs nginx's counters, "
               "per server zone; source=app: app records vs audited Nginx requests)",
               ("source", "host")),
    Instrument("audit_spans_deadlettered_total", "counter", "{span}",
               "spans downstream refused for good, written to the dead-letter spool (reason: "
               "partial_success or the gRPC code); `audit-guard resend` delivers them later",
               ("reason",)),
    Instrument("audit_deadletter_spans", "gauge", "{span}",
               "spans the dead-letter spool holds now (waiting for `audit-guard resend`)"),
    Instrument("audit_deadletter_bytes", "gauge", "By",
               "bytes the dead-letter spool holds now, entry headers included"),
    Instrument("audit_deadletter_max_bytes", "gauge", "By",
               "deadletter.max_bytes: past it the spool refuses entries and Exports are "
               "answered UNAVAILABLE"),
    Instrument("audit_stream_silent", "gauge", "1",
               "1 when a source sent records, then none for reconcile.silence_threshold_s "
               "while traffic continued", ("source",)),
)}
_AMBIGUOUS = "audit.error_join.ambiguous"  # audit_guard.correlate.errorlog_records.AMBIGUOUS
LAG_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
EXPORT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class BatchStats:
    """What the pipeline found in one Export call, counted per batch."""

    records: Counter[str] = field(default_factory=Counter)
    truncated: Counter[tuple[str, str]] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    delayed: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    lags_s: dict[str, list[float]] = field(default_factory=dict)
    rule_matches: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Up to FLAGGED_PER_BATCH flagged records per batch, for the admin API's recent-flags view.
    # (A flagged record made elsewhere, as a dict: tests, tools.)
    flagged: list[FlaggedRows | dict[str, object]] = field(default_factory=list)
    # For reconciliation (audit_guard.completeness), applied once the spans were handed on:
    # audited Nginx requests that expect an app record (trace id, packed request), the trace ids
    # of the app records that came, and the times of the Nginx records per server name.
    expected: list[tuple[bytes, bytes]] = field(default_factory=list)
    app_seen: list[bytes] = field(default_factory=list)
    served: dict[str | None, list[int]] = field(default_factory=dict)
    unprocessable: int = 0  # records the pipeline failed on (see Pipeline._isolated)
    error_join_ambiguous: int = 0  # records flagged by an error-log event with rivals
    spans: int = 0  # spans the Export produced
    resent: int = 0  # Nginx records seen before: the collector is sending a request again

    def add_batch(self, batch: RecordBatch, rules: RuleSet | None = None) -> None:
        source = batch.source
        self.records[source] += len(batch)
        attributes = batch.attributes
        for i, reasons in batch.truncation_reasons.items():
            for reason in reasons:
                self.truncated[(source, reason)] += 1
            # the error-log join's flags are truncations: only those rows can carry its mark
            self.error_join_ambiguous += bool((attributes[i] or {}).get(_AMBIGUOUS))
        for found in batch.violations.values():
            for violation in found:
                self.violations[violation.partition(":")[2]] += 1
        if batch.flags:
            self.flagged.append(flagged_rows(batch, list(islice(batch.flags, FLAGGED_PER_BATCH))))
        # rule name → severity, looked up once per batch (not a tuple of names per flag).
        severities = ({r.name: r.severity for r in rules}
                      if rules is not None and batch.flags else {})
        for found in batch.flags.values():
            if flags.DELAYED in found:
                self.delayed[source] += 1
            if flags.DUPLICATE in found:
                self.duplicates[source] += 1
            if flags.MALFORMED in found:
                self.malformed[source] += 1
            if severities:
                for flag in found:
                    name = flags.rule_name(flag)
                    severity = severities.get(name) if name is not None else None
                    if name is not None and severity is not None:
                        self.rule_matches[(name, severity)] += 1
        if any(batch.observed_time_unix_nano):
            lags = self.lags_s.setdefault(source, [])
            for seen, logged in zip(batch.observed_time_unix_nano, batch.time_unix_nano,
                                    strict=True):
                if seen is not None and logged is not None:
                    lags.append(max(seen - logged, 0) / 1e9)


OTHER_ZONE = "other"  # audit_nginx_records_by_zone_total past reconcile.zone_counts_max
NO_ZONE = "-"  # a record naming neither $server_name nor a Host


class Telemetry:
    def __init__(self, meter_provider: MeterProvider | None = None,
                 max_zones: int = 1000) -> None:
        self._lock = threading.Lock()
        self._max_zones = max_zones
        self._zones: set[str] = set()  # the zones labelled so far (at most _max_zones)
        self._totals = dict.fromkeys(INSTRUMENTS, 0.0)
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._otel: dict[str, object] = {}
        if meter_provider is not None:
            meter = meter_provider.get_meter("audit-guard")
            for inst in INSTRUMENTS.values():
                if inst.kind == "counter":
                    self._otel[inst.name] = meter.create_counter(
                        inst.name, unit=inst.unit, description=inst.description)
                elif inst.kind == "gauge":
                    self._otel[inst.name] = meter.create_gauge(
                        inst.name, unit=inst.unit, description=inst.description)
                else:
                    buckets = (LAG_BUCKETS_S if inst.name == "audit_ingest_lag_seconds"
                               else EXPORT_BUCKETS_S)
                    self._otel[inst.name] = meter.create_histogram(
                        inst.name, unit=inst.unit, description=inst.description,
                        explicit_bucket_boundaries_advisory=buckets)

    def _check(self, name: str, labels: dict[str, str]) -> None:
        inst = INSTRUMENTS[name]  # KeyError: not declared
        if set(labels) != set(inst.labels):
            raise ValueError(f"{name} takes labels {inst.labels}, got {tuple(labels)}")

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._check(name, labels)
        with self._lock:
            self._totals[name] += amount
        counter = self._otel.get(name)
        if counter is not None and amount:
            counter.add(amount, labels)  # type: ignore[attr-defined]

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.observe_many(name, [value], **labels)

    def observe_many(self, name: str, values: list[float], **labels: str) -> None:
        """Each value into the histogram, the labels checked and the total taken once (the SDK
        has no batch record; its record() is ~4 µs a value, paid once per app record's lag)."""
        self._check(name, labels)
        with self._lock:
            self._totals[name] += len(values)  # a histogram's total is its count
        histogram = self._otel.get(name)
        if histogram is not None:
            record = histogram.record  # type: ignore[attr-defined]
            for value in values:
                record(value, labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge's current value for these labels."""
        self._check(name, labels)
        with self._lock:
            self._gauges[(name, tuple(sorted(labels.items())))] = value
        gauge = self._otel.get(name)
        if gauge is not None:
            gauge.set(value, labels)  # type: ignore[attr-defined]

    def gauge(self, name: str, **labels: str) -> float | None:
        """A gauge's last value for exactly these labels (None: never set)."""
        with self._lock:
            return self._gauges.get((name, tuple(sorted(labels.items()))))

    def record_stats(self, stats: BatchStats) -> None:
        for source, n in stats.records.items():
            self.inc("audit_records_total", n, source=source)
        for (source, reason), n in stats.truncated.items():
            self.inc("audit_records_truncated_total", n, source=source, reason=reason)
        for name, n in stats.violations.items():
            self.inc("audit_field_violations_total", n, field=name)
        for source, n in stats.delayed.items():
            self.inc("audit_records_delayed_total", n, source=source)
        for source, n in stats.duplicates.items():
            self.inc("audit_records_duplicate_total", n, source=source)
        for source, n in stats.malformed.items():
            self.inc("audit_records_malformed_total", n, source=source)
        for (rule, severity), n in stats.rule_matches.items():
            self.inc("audit_rule_matches_total", n, rule=rule, severity=severity)
        for source, lags in stats.lags_s.items():
            self.observe_many("audit_ingest_lag_seconds", lags, source=source)
        if stats.error_join_ambiguous:
            self.inc("audit_error_join_ambiguous_total", stats.error_join_ambiguous)
        if stats.unprocessable:
            self.inc("audit_records_unprocessable_total", stats.unprocessable)
        for host, times in stats.served.items():
            # served_by_host's grouping (once per zone and batch; re-sent rows left out).
            if times and self._max_zones:
                self.inc("audit_nginx_records_by_zone_total", len(times), zone=self._zone(host))

    def _zone(self, host: str | None) -> str:
        """The zone label: the first reconcile.zone_counts_max zones by name, then "other"
        (each label value is a series in Prometheus: nginx's server names are bounded, a Host
        header sent by clients is not)."""
        zone = host or NO_ZONE
        if zone in self._zones:
            return zone
        with self._lock:
            if len(self._zones) >= self._max_zones:
                return OTHER_ZONE
            self._zones.add(zone)
        return zone

    def snapshot(self) -> dict[str, float]:
        """Totals per metric name (all label values together)."""
        with self._lock:
            return dict(self._totals)
