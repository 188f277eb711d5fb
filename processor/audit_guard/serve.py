"""`audit-guard serve` assembled from Settings: the one place that wires the service together.

    build_service(settings)  →  Service  →  .start()  →  .wait()   (.stop() from a signal)

Everything that can fail on bad configuration or a busy port fails in `build_service` or
`start` with a `StartupError` whose message names the key and says what to do (exit 2); nothing
fails after the service is up. The parts, built in this order:

- the admin socket (bound first: a taken admin port must stop start-up, not leave a service
  running without health checks or metrics) and the meter provider (Prometheus on the admin
  port, OTLP push when telemetry.otlp_endpoint is set);
- the pipeline (rules compiled: a bad rule file refuses to start);
- the dead-letter spool and the span exporter, the OTLP server;
- completeness (request reconciliation, counters, silence) with its state file;
- the admin app, the rules reloader (SIGHUP, file changes).
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

    from .admin import AdminState
    from .completeness import CompletenessState
    from .integrity.service import Integrity
    from .otlp.server import OtlpServer
    from .otlp.spool import DeadLetterSpool
    from .pipeline import Pipeline
    from .telemetry import Telemetry

__all__ = ["Service", "StartupError", "build_service"]

log = logging.getLogger("audit_guard")


class StartupError(Exception):
    """The service cannot start; the message is for the operator (exit 2)."""


@dataclass
class Service:
    settings: Settings
    pipeline: Pipeline
    server: OtlpServer
    admin_state: AdminState
    admin_app: Any
    admin_socket: Any
    meter_provider: MeterProvider
    spool: DeadLetterSpool | None
    integrity: Integrity | None = None  # chains + signed digests, when integrity.enabled
    reload_rules: Callable[[], None] | None = None  # set by start(); SIGHUP calls it
    _stop_watch: threading.Event = field(default_factory=threading.Event)
    _admin: Any = None

    def start(self) -> None:
        from .admin import AdminServer

        s = self.settings
        try:
            self._admin = AdminServer(self.admin_app, self.admin_socket).start()
        except RuntimeError as exc:
            raise StartupError(f"admin.listen={s.admin.listen}: {exc}") from None
        # The saved state (requests waiting for their app record, error-log events waiting for
        # their access record) is restored BEFORE the receiver accepts a call: an Export taken
        # in between would miss its join (a cut stream never flagged on its request) and be
        # overwritten by the restore — not the output its first sending gave.
        completeness = self.server.completeness
        if completeness is not None:
            try:
                completeness.start()
            except sqlite3.Error as exc:
                self._admin.stop()
                raise StartupError(
                    f"cannot restore the reconciliation state from reconcile.state_dir="
                    f"{s.reconcile.state_dir}: {exc} (move the directory aside to start afresh)"
                ) from None
        try:
            self.server.start()
        except OSError as exc:
            if completeness is not None:
                completeness.stop()
            self._admin.stop()
            raise StartupError(str(exc)) from None
        self.admin_state.mark_receiver_started()
        if self.integrity is not None:
            self.integrity.start(self.server.exporter, self.server.pipeline_lock,
                                 self.server.telemetry.snapshot)
            self.server.on_drained = self.integrity.stop  # the final digest, at shutdown
        if self.spool is not None:
            _watch_deadletter(self.spool, self.server.telemetry, self.admin_state,
                              self._stop_watch)
        self.reload_rules = reload_rules = _rules_reloader(s, self.pipeline)
        if s.rules_files:
            threading.Thread(target=_watch_files, args=(s.rules_files, reload_rules),
                             name="rules-watch", daemon=True).start()
        # Throughput: start-up objects are never garbage, so freeze them out of the cyclic GC,
        # and let the pipeline's many short-lived containers (freed by reference counting
        # anyway) trigger it less often. Measured: about 15% less CPU per record.
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        log.info("audit-guard %s ready: OTLP in on %s, spans out to %s",
                 __version__, s.server.listen, s.exporter.endpoint)

    def stop(self) -> None:
        """Begin a graceful stop (from a signal handler): /readyz answers 503 while the calls in
        flight finish; `wait` returns once they did."""
        self.admin_state.mark_receiver_started(False)
        threading.Thread(target=self.server.stop, name="shutdown").start()

    def wait(self) -> None:
        """Until the server stopped; then the rest, in order (the last Export's state is
        checkpointed before the state file closes)."""
        self.server.wait()
        self._stop_watch.set()
        if self.server.completeness is not None:
            self.server.completeness.stop()
        if self._admin is not None:
            self._admin.stop()
        self.meter_provider.shutdown()  # pushes the last OTLP metrics, if configured
        log.info("stopped; counters: %s", self.server.telemetry.snapshot())


def build_service(settings: Settings) -> Service:
    """Every part, constructed (nothing started); StartupError names what is wrong."""
    from .admin import AdminState, bind_admin_socket, create_app
    from .otlp.server import OtlpServer
    from .pipeline import Pipeline
    from .rules import RuleError
    from .telemetry import Telemetry

    try:
        admin_socket = bind_admin_socket(settings.admin.listen)
    except OSError as exc:
        raise StartupError(f"cannot serve the admin API and /metrics on admin.listen="
                           f"{settings.admin.listen}: {exc}") from None
    state = _completeness_state(settings)
    integrity = _integrity(settings)
    try:
        pipeline = Pipeline(settings, reconciler=state.requests if state else None,
                            counters=state.counters if state else None,
                            chain=integrity.chain if integrity else None)
    except RuleError as exc:
        raise StartupError(f"audit rules refused, not starting:\n{exc}") from None
    _warn_without_native_decoder()
    try:
        spool = _deadletter_spool(settings)
    except OSError as exc:
        raise StartupError(f"deadletter.dir={settings.deadletter_dir()}: cannot keep the "
                           f"dead-letter spool there: {exc}") from None
    meter_provider = _meter_provider(settings)
    server = OtlpServer(settings.server, pipeline, _findings_exporter(settings, spool),
                        Telemetry(meter_provider, settings.reconcile.zone_counts_max))
    admin_state = AdminState(settings.admin.flags_buffer, settings.admin.requests_kept,
                             settings.admin.records_per_request)
    server.on_handed_on = admin_state.record
    server.on_export = admin_state.note_export
    # /api/status shows it, POST /api/membership-change records a change in it.
    admin_state.membership = state.membership if state is not None else None
    if state is not None:
        server.completeness = _completeness(settings, state, pipeline, server, admin_state)
    admin = settings.admin
    app = create_app(admin_state, pipeline.rules, token=admin.token,
                     rules_files=settings.rules_files, include_builtin=settings.builtin_rules,
                     lag_threshold_s=settings.lag_threshold_s,
                     rules_test_open=admin.rules_test_open,
                     read_token_required=admin.read_token_required,
                     max_body_bytes=admin.max_body_bytes, allowed_hosts=admin.hosts(),
                     trace_url=admin.trace_url)
    if integrity is not None:
        app.state.public_key_pem = integrity.digests.key.public_pem  # GET /api/integrity/key
        app.state.key_id = integrity.digests.key.key_id
    return Service(settings, pipeline, server, admin_state, app, admin_socket, meter_provider,
                   spool, integrity)


def _findings_exporter(settings: Settings, spool: DeadLetterSpool | None) -> Any:
    """The span exporter (findings.output spans), or spans and/or log records behind one
    export() (audit_guard.audit_logs): an Export is acknowledged once every output took it."""
    from .audit_logs import FindingsExporter
    from .otlp.exporter import SpanExporter

    output = settings.findings.output
    spans = SpanExporter(settings.exporter, spool=spool)  # also for spans relayed from apps
    if output == "spans":
        return spans
    return FindingsExporter(spans, SpanExporter(settings.findings.logs_exporter, logs=True),
                            findings_as_spans=output == "both")


def _integrity(settings: Settings) -> Integrity | None:
    """Chains and the digest signer (key loaded or made), or None when integrity is off."""
    from .integrity.keys import KeyFileError, SigningKey
    from .integrity.service import Integrity

    if not settings.integrity.enabled:
        return None
    cfg, state_dir = settings.integrity, settings.integrity.state_dir
    if state_dir is None and settings.reconcile.state_dir is not None:
        state_dir = settings.reconcile.state_dir / "integrity"
    if state_dir is None:
        raise StartupError("integrity.enabled is true but neither integrity.state_dir nor "
                           "reconcile.state_dir is set: name a directory for the chain heads")
    try:
        key = SigningKey.from_file(cfg.key_file or state_dir / "signing-key.pem",
                                   cfg.public_key_dir or state_dir / "public-keys")
        return Integrity(state_dir, key, cfg.digest_interval_s, settings.dedup_max_records)
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None
    except (OSError, ValueError, KeyError) as exc:
        raise StartupError(f"integrity.state_dir={state_dir}: cannot keep or read the chain "
                           f"state there: {exc} (move the files aside to start new chains)"
                           ) from None


def _completeness_state(settings: Settings) -> CompletenessState | None:
    """The reconcilers (and their state file), made before the pipeline that is handed them;
    None when reconciliation is off."""
    from .completeness import CompletenessState

    if not settings.reconcile.enabled:
        return None
    try:
        return CompletenessState(settings.reconcile)
    except (OSError, sqlite3.Error) as exc:
        raise StartupError(f"reconcile.state_dir={settings.reconcile.state_dir}: cannot keep "
                           f"the reconciliation state there: {exc}") from None


def _completeness(settings: Settings, state: CompletenessState, pipeline: Pipeline,
                  server: OtlpServer, admin_state: AdminState) -> Any:
    from .completeness import Completeness

    return Completeness(
        settings.reconcile, state, pipeline, server.exporter, server.telemetry,
        lock=server.pipeline_lock, on_handed_on=admin_state.record,
        on_status=admin_state.set_completeness,
    )


def _warn_without_native_decoder() -> None:
    """Said once at start: without its C decoder the service is slower, not different."""
    from .sources import nginx_access

    if not nginx_access.native_decoder():
        log.warning("the nginx access-log decoder's C extension (audit_guard.sources."
                    "_audit_json) was not built when audit-guard was installed (no C "
                    "compiler): lines of the shipped log_format are decoded by msgspec, the "
                    "same records at ~1-2 µs a record more; reinstall with gcc present to "
                    "build it")


def _deadletter_spool(settings: Settings) -> DeadLetterSpool | None:
    """The dead-letter spool, or None (then a permanent rejection is answered UNAVAILABLE
    upstream and stays in the collector's queue: said once at start)."""
    from .otlp.spool import DeadLetterSpool

    directory = settings.deadletter_dir()
    if directory is None:
        log.warning("no dead-letter spool (deadletter.dir and reconcile.state_dir are unset): "
                    "spans downstream refuses for good are answered UNAVAILABLE, so the "
                    "collector keeps retrying them from its queue until the cause is fixed")
        return None
    return DeadLetterSpool(directory, settings.deadletter.max_bytes)


def _watch_deadletter(spool: DeadLetterSpool, telemetry: Telemetry, admin_state: AdminState,
                      stop: threading.Event) -> None:
    """The spool's gauges at once on every change, and with the status page's summary every
    few seconds (`resend` empties the spool from another process)."""
    from .otlp.spool import SpoolSummary, SpoolUsage, watch_spool

    telemetry.set("audit_deadletter_max_bytes", spool.max_bytes)

    def gauges(usage: SpoolUsage) -> None:
        telemetry.set("audit_deadletter_spans", usage.spans)
        telemetry.set("audit_deadletter_bytes", usage.bytes)

    def publish(summary: SpoolSummary) -> None:
        gauges(SpoolUsage(summary.entries, summary.spans, summary.bytes))
        admin_state.set_deadletter(summary)

    spool.on_change = gauges
    watch_spool(spool, publish, stop)


def _rules_reloader(settings: Settings, pipeline: Pipeline) -> Callable[[], None]:
    """Recompile the rule files and swap them in; a set with any error is refused whole and the
    running set stays (the error names the rule and the position in its expression)."""
    from .rules import RuleError

    rules_log = logging.getLogger("audit_guard.rules")
    lock = threading.Lock()

    def reload() -> None:
        with lock:
            try:
                new = pipeline.rules.load_files(settings.rules_files,
                                                include_builtin=settings.builtin_rules)
            except RuleError as exc:
                rules_log.error("audit rules NOT reloaded; the previous set stays active:\n%s",
                                exc)
                return
            rules_log.info("audit rules reloaded: %d rule(s): %s", len(new),
                           ", ".join(new.names))

    return reload


def _watch_files(paths: list[Path], on_change: Callable[[], None], interval: float = 2.0
                 ) -> None:
    def stamp() -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for path in paths:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return out

    last = stamp()
    while True:
        time.sleep(interval)
        now = stamp()
        if now != last:
            last = now
            on_change()


def _meter_provider(settings: Settings) -> MeterProvider:
    """Prometheus text (served by the admin app's /metrics from the default registry, which the
    PrometheusMetricReader registers into); OTLP push when telemetry.otlp_endpoint is set."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.resources import Resource

    readers: list[Any] = [PrometheusMetricReader()]
    if settings.telemetry.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=settings.telemetry.otlp_endpoint, insecure=True),
            export_interval_millis=settings.telemetry.export_interval_s * 1000,
        ))
    resource = Resource.create({"service.name": "audit-guard", "service.version": __version__})
    # No exemplars: the Prometheus text carries none, and the SDK's default (trace-based)
    # filter looks up the current span at every measurement (~1 µs a lag) to find none here.
    return MeterProvider(metric_readers=readers, resource=resource,
                         exemplar_filter=AlwaysOffExemplarFilter())
