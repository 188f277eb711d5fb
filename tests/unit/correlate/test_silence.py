"""Silence: a source that sent records, then none for longer than the threshold while
traffic went on, is reported by `audit_stream_silent{source}`."""

from __future__ import annotations

from audit_guard.completeness import Completeness, CompletenessState
from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from audit_guard.sources.nginx_counters import ALL_ZONES
from audit_guard.sources.nginx_counters import CounterSample as Reading
from audit_guard.telemetry import BatchStats, Telemetry

S = 1_000_000_000
T0 = 1_764_165_600 * S


def completeness() -> Completeness:
    settings = load_settings(reconcile={"silence_threshold_s": 60, "settle_s": 1})
    state = CompletenessState(settings.reconcile)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    return Completeness(settings.reconcile, state, pipeline, exporter=None, telemetry=Telemetry())


def handed_on(c: Completeness, now: int, **records: int) -> None:
    stats = BatchStats()
    for source, n in records.items():
        stats.records[source] = n
    if records.get("nginx"):
        stats.expected = [(bytes(16), b"")]  # an audited request: app traffic expected
    c.on_handed_on(stats, now)


def test_app_silent_only_while_audited_requests_keep_coming() -> None:
    c = completeness()
    assert c.silent(T0) == {}  # never sent anything: not silent, unknown
    handed_on(c, T0, app=5, nginx=5)
    assert c.silent(T0 + 61 * S) == {"app": False, "nginx": False}  # quiet, but so is nginx
    handed_on(c, T0 + 30 * S, nginx=5)  # requests go on, the app writes nothing
    assert c.silent(T0 + 59 * S)["app"] is False  # not for long enough yet
    assert c.silent(T0 + 61 * S)["app"] is True
    handed_on(c, T0 + 62 * S, app=1)
    assert c.silent(T0 + 62 * S)["app"] is False


def test_nginx_silent_when_its_counters_show_traffic() -> None:
    c = completeness()
    c.counters.add_readings("stub", [Reading(ALL_ZONES, 100, T0)])
    handed_on(c, T0 + S, nginx=3)
    c.counters.add_readings("stub", [Reading(ALL_ZONES, 103, T0 + 10 * S)])
    c.counters.evaluate(T0 + 20 * S)
    assert c.silent(T0 + 80 * S)["nginx"] is False  # no traffic counted after its last record
    c.counters.add_readings("stub", [Reading(ALL_ZONES, 150, T0 + 70 * S)])
    c.counters.evaluate(T0 + 80 * S)
    assert c.silent(T0 + 80 * S)["nginx"] is True
    # and the gauge says so
    c._report_gauges(T0 + 80 * S)
    assert c._telemetry.gauge("audit_stream_silent", source="nginx") == 1
    assert c._telemetry.gauge("audit_stream_silent", source="app") is None  # never seen
