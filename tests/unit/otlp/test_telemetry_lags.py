"""audit_ingest_lag_seconds: every lag of a batch reaches the OpenTelemetry SDK's histogram
(count, sum and buckets per source), as the Prometheus and OTLP readers then show it. Through
the real SDK (an in-memory reader) with the exemplar filter serve uses."""

from __future__ import annotations

from bisect import bisect_left

import pytest
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from audit_guard.telemetry import LAG_BUCKETS_S, BatchStats, Telemetry


def histograms(reader: InMemoryMetricReader) -> dict[str, tuple[int, float, list[int]]]:
    """source → (count, sum, bucket counts) of audit_ingest_lag_seconds."""
    out: dict[str, tuple[int, float, list[int]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "audit_ingest_lag_seconds":
                    for p in metric.data.data_points:
                        out[str(p.attributes["source"])] = (p.count, p.sum, list(p.bucket_counts))
    return out


def expected(lags: list[float]) -> tuple[int, float, list[int]]:
    buckets = [0] * (len(LAG_BUCKETS_S) + 1)  # upper bounds inclusive, as OpenTelemetry's
    for lag in lags:
        buckets[bisect_left(LAG_BUCKETS_S, lag)] += 1
    return len(lags), sum(lags), buckets


def test_every_lag_of_every_batch_is_in_the_histogram_per_source() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(MeterProvider(metric_readers=[reader],
                                        exemplar_filter=AlwaysOffExemplarFilter()))
    app = [0.0, 0.01, 0.0100001, 0.3, 2.5, 301.0, 0.001 * 7]
    pgaudit = [1.0, 1.0, 59.9]
    first, second = BatchStats(), BatchStats()
    first.lags_s["app"] = app[:4]
    first.lags_s["pgaudit"] = pgaudit
    second.lags_s["app"] = app[4:]
    second.lags_s["nginx"] = []  # a source with no lags this batch: no observation
    telemetry.record_stats(first)
    telemetry.record_stats(second)
    got = histograms(reader)
    assert set(got) == {"app", "pgaudit"}
    for source, lags in (("app", app), ("pgaudit", pgaudit)):
        count, total, buckets = got[source]
        want_count, want_total, want_buckets = expected(lags)
        assert (count, buckets) == (want_count, want_buckets), source
        assert total == pytest.approx(want_total), source
    assert telemetry.snapshot()["audit_ingest_lag_seconds"] == len(app) + len(pgaudit)


def test_observe_many_checks_the_labels_like_observe() -> None:
    telemetry = Telemetry()
    with pytest.raises(ValueError, match="takes labels"):
        telemetry.observe_many("audit_ingest_lag_seconds", [1.0], zone="a")
    with pytest.raises(KeyError):
        telemetry.observe_many("audit_no_such_histogram", [1.0], source="app")
    assert telemetry.snapshot()["audit_ingest_lag_seconds"] == 0
