"""Completeness in the running service: what should exist against what arrived.

- Request level (audit_guard.correlate.reconcile): every audited, proxied Nginx request expects an
  app audit record within `reconcile.window_s`; when none comes, a `missing_record` span is
  sent in the request's trace and counted in `audit_records_missing_total{source="app"}`.
- Counter level (audit_guard.correlate.counters): nginx's request counters (VTS through the
  collector's metrics, or status endpoints read here) against the access-log records received
  → `audit_log_completeness_ratio{source="nginx",host}` and
  `audit_records_missing_total{source="nginx"}`.
- Silence: a source that sent records and then none for `reconcile.silence_threshold_s` while
  traffic went on → `audit_stream_silent{source}` = 1.

The OTLP server calls `on_handed_on` for every Export whose spans were handed on, before the
Export is acknowledged; a ticker thread does the rest once a second.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CounterTarget, ReconcileConfig
from .correlate.counters import CounterReconciler
from .correlate.membership import Change, MembershipWatch, Resolver, resolve_addresses
from .correlate.reconcile import Due, RequestReconciler, missing_spans_batch
from .correlate.silence import WATCHED, SilenceWatch
from .correlate.state import StateStore, StateWriteError
from .handoff import DownstreamRejected, DownstreamUnavailable, SpanSink
from .sources import nginx_counters
from .telemetry import BatchStats, Telemetry

if TYPE_CHECKING:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from .pipeline import Pipeline

__all__ = ["STATE_FILE", "Completeness"]

log = logging.getLogger(__name__)

STATE_FILE = "reconcile.sqlite"
_ERROR_EVENTS = "errorlog.pending"  # the error-log join's waiting events, in the state file
_NS = 1_000_000_000
_TICK_S = 1.0
_SCRAPE_TIMEOUT_S = 5.0
_SCRAPE_MAX_BYTES = 8 * 1024 * 1024  # VTS with thousands of zones is a few MiB


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A status endpoint that redirects is misconfigured (or not nginx's): never followed."""

    def redirect_request(self, req: object, fp: object, code: int, msg: str, headers: object,
                         newurl: str) -> None:
        raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl} not followed "
                                     "(reconcile.counter_targets must name the status page "
                                     "itself)", headers, fp)  # type: ignore[arg-type]


_OPENER = urllib.request.build_opener(_NoRedirects)


def read_status(url: str, deadline_s: float = _SCRAPE_TIMEOUT_S,
                max_bytes: int = _SCRAPE_MAX_BYTES) -> bytes:
    """A status page's body: no redirects, at most `max_bytes`, all of it within `deadline_s`
    (the socket timeout alone bounds each read, not a slow trickle)."""
    started = time.monotonic()
    chunks: list[bytes] = []
    size = 0
    with _OPENER.open(url, timeout=deadline_s) as reply:
        while chunk := reply.read1(65536):  # what has come, not a full 64 KiB
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"status page larger than {max_bytes} bytes: not read further")
            if time.monotonic() - started > deadline_s:
                raise TimeoutError(f"status page not read within {deadline_s:.0f} s")
            chunks.append(chunk)
    return b"".join(chunks)


class CompletenessState:
    """The completeness stages' state, made before the pipeline that feeds them (which is
    handed `requests` and `counters`) and the Completeness loop that drives them (`membership`:
    the admin API's POST /api/membership-change reaches it too)."""

    def __init__(self, config: ReconcileConfig, resolver: Resolver = resolve_addresses
                 ) -> None:
        # One state file for the reconciler and the error-log events waiting for their access
        # record (both are written before an Export is acknowledged).
        self.store = (StateStore(Path(config.state_dir) / STATE_FILE)
                      if config.state_dir else None)
        self.requests = RequestReconciler(
            window_s=config.window_s, late_horizon_s=config.late_horizon_s,
            max_pending=config.max_pending, store=self.store,
        )
        self.counters = CounterReconciler(config.settle_s, config.completeness_span_s,
                                          count_zones=config.zone_counts_max > 0)
        # A report can come a window after its request, later while a hold lasts.
        keep_s = config.window_s + max(config.resend_hold_s, config.restart_hold_s)
        self.membership = MembershipWatch(config.grace_s(), keep_s,
                                          dns_name=config.membership_dns,
                                          poll_s=config.membership_poll_s, resolver=resolver)


class Completeness:
    def __init__(
        self,
        config: ReconcileConfig,
        state: CompletenessState,
        pipeline: Pipeline,
        exporter: SpanSink,
        telemetry: Telemetry,
        *,
        lock: AbstractContextManager[object] | None = None,
        on_handed_on: Callable[[BatchStats], None] | None = None,
        on_status: Callable[[str, float | None, bool | None], None] | None = None,
    ) -> None:
        self.config = config
        self._pipeline = pipeline
        self._exporter = exporter
        self._telemetry = telemetry
        self._error_outcomes: dict[str, int] = {}  # error-log outcomes counted so far
        self._resent_at: int | None = None  # when Nginx records last came again (or start)
        self._hold_ns = 0  # how long after _resent_at missing_record reports are held
        self._lock = lock or nullcontext()  # serialises span building with the OTLP server
        self._on_handed_on = on_handed_on  # the admin state, for the missing spans' flags
        self._on_status = on_status  # (source, completeness, silent) for the admin API
        self.store, self.requests, self.counters = state.store, state.requests, state.counters
        self.membership = state.membership
        self.membership.on_change = self._count_change
        if self.store is not None and self.store.corrupt_moved_to is not None:
            telemetry.inc("audit_state_corrupt_total")
        self.silence = SilenceWatch(int(config.silence_threshold_s * _NS),
                                    self.counters.traffic_since)
        self._next_scrape = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if pipeline.reconciler is not self.requests or pipeline.counters is not self.counters:
            raise ValueError("the pipeline must be built with this state's reconcilers")

    # -- life cycle ------------------------------------------------------------------------
    def start(self, now_ns: int | None = None) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        store = self.store
        moved = store.corrupt_moved_to if store is not None else None
        restored = self.requests.restore(now)
        if store is not None and store.corrupt_moved_to is not moved:
            self._telemetry.inc("audit_state_corrupt_total")
        blob = store.get(_ERROR_EVENTS) if store is not None else None
        if blob is not None:
            try:
                waiting = self._pipeline.errors.load(blob)
            except (ValueError, TypeError) as exc:
                log.error("reconcile state: the saved error-log events do not decode (%s); "
                          "starting without them", exc)
                self._telemetry.inc("audit_state_corrupt_total")
            else:
                if waiting:
                    log.info("error-log join: %d events restored", waiting)
        if self.config.state_dir is None:
            log.warning("reconcile.state_dir is not set: requests waiting for their app record "
                        "are kept in memory only and forgotten on restart")
        elif restored:
            log.info("reconcile: %d tracked requests restored from %s", restored,
                     self.config.state_dir)
            if self.config.restart_hold_s:
                self._resent_at = now  # see report_missing
                self._hold_ns = int(self.config.restart_hold_s * _NS)
                self._pipeline.errors.hold_until_ns = now + self._hold_ns
        self._thread = threading.Thread(target=self._run, name="completeness", daemon=True)
        self._thread.start()
        self.membership.start()

    def stop(self) -> None:
        self.membership.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.requests.close(time.time_ns())

    def _run(self) -> None:
        while not self._stop.wait(_TICK_S):
            try:
                self.tick(time.time_ns())
            except Exception:  # keep ticking: a bug here must not end reconciliation for good
                log.exception("completeness check failed; retrying next second")

    def _count_change(self, change: Change) -> None:
        self._telemetry.inc("audit_membership_changes_total", trigger=change.trigger)

    # -- inputs ----------------------------------------------------------------------------
    def on_handed_on(self, stats: BatchStats, now_ns: int) -> None:
        """An Export's findings once its spans were handed on (before it is acknowledged)."""
        result = self.requests.commit(stats.expected, stats.app_seen, now_ns)
        errors = self._pipeline.errors
        self._commit_error_events()
        if result.late:
            self._telemetry.inc("audit_records_late_total", result.late, source="app")
        if result.evicted:
            self._telemetry.inc("audit_reconcile_evicted_total", result.evicted)
        if stats.served:
            self.counters.add_records(stats.served)
        if stats.resent:
            self._resent_at = now_ns
            self._hold_ns = int(self.config.resend_hold_s * _NS)
            errors.hold_until_ns = now_ns + self._hold_ns
        for source, n in stats.records.items():
            if n:
                self.silence.on_records(source, now_ns)
        if stats.expected:
            self.silence.on_expected(now_ns)

    def _commit_error_events(self) -> None:
        """The error-log join's waiting events persisted, its outcomes counted."""
        errors = self._pipeline.errors
        if self.store is not None and errors.changed:
            self.store.put(_ERROR_EVENTS, errors.dump())
        for outcome, total in errors.outcomes.items():
            if total > self._error_outcomes.get(outcome, 0):
                self._telemetry.inc("audit_error_events_total",
                                    total - self._error_outcomes.get(outcome, 0), outcome=outcome)
                self._error_outcomes[outcome] = total

    def on_metrics(self, request: ExportMetricsServiceRequest) -> int:
        """Metrics from the collector (its prometheus/nginx_vts receiver); returns how many
        request-counter samples they held."""
        try:
            samples = nginx_counters.samples_from_otlp(request)
        except nginx_counters.CounterFormatError as exc:
            log.warning("nginx VTS metrics from the collector not understood: %s", exc)
            return 0
        if samples:
            self.counters.add_readings("collector", samples)
        return len(samples)

    def scrape(self, target: CounterTarget) -> None:
        """Read one status endpoint (reconcile.counter_targets)."""
        now_ns = time.time_ns()  # the reading's time: when it was asked for (as Prometheus)
        try:
            body = read_status(target.url)
            text = body.decode("utf-8", "replace")
            if target.format == "stub_status":
                samples = nginx_counters.parse_stub_status(text, now_ns)
            elif target.format == "vts_json":
                samples = nginx_counters.parse_vts_json(body, now_ns)
            else:
                samples = nginx_counters.parse_vts_prometheus(text, now_ns)
        except (OSError, ValueError) as exc:
            self._telemetry.inc("audit_counter_scrape_errors_total", target=target.url)
            log.warning("cannot read nginx counters from %s (%s): %s", target.url,
                        target.format, exc)
            return
        # stub_status counts our own status request, which is not logged (access_log off).
        own = 1 if target.format == "stub_status" else 0
        self.counters.add_readings(target.url, samples, own)

    # -- the ticker ------------------------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        self.report_missing(now_ns)
        self.membership.expire(now_ns)
        self.report_error_events(now_ns)
        if self.config.counter_targets and now_ns >= self._next_scrape:
            self._next_scrape = now_ns + int(self.config.scrape_interval_s * _NS)
            for target in self.config.counter_targets:
                self.scrape(target)
        for host, n in self.counters.evaluate(now_ns).items():
            log.warning("nginx counted %d requests for %s that reached no access-log record",
                        n, host)
            self._telemetry.inc("audit_records_missing_total", n, source="nginx")
        self._report_gauges(now_ns)

    def report_error_events(self, now_ns: int) -> int:
        """Hand on the error-log events whose wait is over (audit_guard.correlate.errorlog) when
        no Export came to do it: traffic stopped, or — behind load_balancing, where error-log
        events travel apart from access records (docs/scale-out.md) — the event came after its
        access record and nothing followed. Compute, hand off and commit under the pipeline
        lock, as an Export does; undone (retried next tick) when downstream is unavailable."""
        with self._lock:
            errors = self._pipeline.errors
            saved = errors.savepoint()
            outcomes = sum(errors.outcomes.values())
            batches = errors.expired_batches(now_ns)
            if not batches:
                if sum(errors.outcomes.values()) == outcomes:
                    errors.rollback(saved)  # forgetting joined events is no reason for a write
                else:  # events dropped (error_join_unjoined: drop): nothing to hand on
                    self._commit_error_events()
                return 0
            for batch in batches:
                if self._pipeline.redact.active:
                    self._pipeline.redact(batch)
            count = sum(map(len, batches))
            traces = b"".join(self._pipeline.to_traces(batch, now_ns) for batch in batches)
            try:
                outcome = self._exporter.export(traces, count)
            except (DownstreamUnavailable, DownstreamRejected) as exc:
                errors.rollback(saved)
                log.warning("%d error-log spans not handed on, retrying: %s", count, exc)
                return 0
            stats = BatchStats()
            for batch in batches:
                stats.add_batch(batch)
            self._telemetry.inc("audit_spans_exported_total", outcome.accepted)
            self.on_handed_on(stats, now_ns)  # persists the join's state, counts outcomes
        if self._on_handed_on is not None:
            self._on_handed_on(stats)
        return count

    def report_missing(self, now_ns: int) -> int:
        """Send a missing_record span for every request whose window passed; returns how many
        were reported. Kept pending (retried next tick) when downstream is unavailable, and
        while the collector is sending requests again (reconcile.resend_hold_s)."""
        resent_at = self._resent_at
        if resent_at is not None and now_ns - resent_at < self._hold_ns:
            return 0
        due = self.requests.due(now_ns)
        if not due:
            return 0
        due = self._keep_back(due, now_ns)
        if not due:
            return 0
        batch = missing_spans_batch(due, self.requests.window_s)
        with self._lock:
            traces = self._pipeline.to_traces(batch, now_ns)
        try:
            outcome = self._exporter.export(traces, len(batch))
        except (DownstreamUnavailable, DownstreamRejected) as exc:
            log.warning("%d missing_record spans not handed on, retrying: %s", len(batch), exc)
            return 0
        self._telemetry.inc("audit_spans_exported_total", outcome.accepted)
        if outcome.spooled:
            self._telemetry.inc("audit_spans_deadlettered_total", outcome.spooled,
                                reason=outcome.reason)
        try:
            changed = self.requests.declare_missing([d.trace_id for d in due], now_ns)
        except StateWriteError as exc:  # sent again (same span ids) at the next tick
            self._telemetry.inc("audit_state_write_errors_total")
            log.error("%s: the missing_record spans will be sent again", exc)
            return 0
        self._telemetry.inc("audit_records_missing_total", changed, source="app")
        if self._on_handed_on is not None:
            stats = BatchStats()
            stats.add_batch(batch)
            self._on_handed_on(stats)
        log.warning("%d audited requests have no app audit record after %.0f s "
                    "(missing_record spans sent)", changed, self.requests.window_s)
        return changed

    def _keep_back(self, due: list[Due], now_ns: int) -> list[Due]:
        """The due requests to report: those logged within the grace of a membership change
        (audit_guard.correlate.membership) are counted instead and leave the pending set as
        if reported (a late app record is still recognised) — no span, no missing count, and
        not in audit_log_completeness_ratio."""
        due, kept = self.membership.split(due, now_ns)
        if kept:
            try:
                self.requests.declare_missing([d.trace_id for d in kept], now_ns,
                                              outcome=False)
            except StateWriteError as exc:  # kept back again at the next tick
                self._telemetry.inc("audit_state_write_errors_total")
                log.error("%s: retrying at the next tick", exc)
                return due
            self.membership.count(kept, now_ns)
            self._telemetry.inc("audit_missing_suppressed_total", len(kept),
                                reason="membership_change")
        return due

    def _report_gauges(self, now_ns: int) -> None:
        t = self._telemetry
        t.set("audit_reconcile_pending", self.requests.pending())
        span = int(self.config.completeness_span_s * _NS)
        app_ratio = self.requests.completeness(now_ns, span)
        if app_ratio is not None:
            t.set("audit_log_completeness_ratio", app_ratio, source="app",
                  host=nginx_counters.ALL_ZONES)
        ratios = self.counters.ratios()
        for host, ratio in ratios.items():
            t.set("audit_log_completeness_ratio", ratio, source="nginx", host=host)
        silent = self.silent(now_ns)
        for source in WATCHED:
            if source in silent or source in self.silence.last_records:
                t.set("audit_stream_silent", int(silent.get(source, False)), source=source)
        if self._on_status is not None:
            nginx_ratio = min(ratios.values()) if ratios else None
            for source, ratio in (("nginx", nginx_ratio), ("app", app_ratio)):
                self._on_status(source, ratio, silent.get(source))
            self._on_status("pgaudit", None, silent.get("pgaudit"))

    def silent(self, now_ns: int) -> dict[str, bool]:
        """Per source that has sent records: whether it has been quiet for longer than the
        threshold while traffic went on (audit_guard.correlate.silence)."""
        return self.silence.silent(now_ns)
