"""Behind load_balancing every instance gets every error-log event (docs/scale-out.md): the
instance holding the access record joins it exactly as one instance would; the others drop it
after the window without a span, and count it."""

from __future__ import annotations

import pytest

from audit_guard.completeness import Completeness, CompletenessState
from audit_guard.config import ConfigError, load_settings
from audit_guard.pipeline import Pipeline
from audit_guard.telemetry import BatchStats, Telemetry
from tests.support.otlp_doubles import span_attributes
from tests.unit.correlate.test_error_join import ACCESS, ERROR, NOW, request, spans

AFTER_WINDOW = NOW + 6 * 10**9


def _instance(unjoined: str) -> Pipeline:
    return Pipeline(load_settings(error_join_window_s=5, error_join_unjoined=unjoined))


def test_the_owner_joins_the_event_as_one_instance_does() -> None:
    owner = _instance("drop")
    assert spans(owner, request("nginx_error", ERROR)) == []
    (span,) = spans(owner, request("nginx_access", ACCESS))
    assert "truncated:upstream_closed" in span_attributes(span)["audit.flags"]
    assert spans(owner, request("nginx_access"), now=AFTER_WINDOW) == []
    assert owner.errors.outcomes == {"received": 1, "joined": 1}


def test_the_other_instances_drop_it_quietly_and_count_it() -> None:
    other = _instance("drop")
    assert spans(other, request("nginx_error", ERROR)) == []
    # no access record of that connection here: after the window, nothing is reported
    assert spans(other, request("nginx_access"), now=AFTER_WINDOW) == []
    assert other.errors.outcomes == {"received": 1, "dropped_unjoined": 1}


def test_with_no_more_traffic_the_ticker_drops_it_and_counts_it(tmp_path) -> None:
    """The other instance's event when no Export comes after it: the completeness ticker
    decides it (no span to hand on), keeps the decision and counts it — it was rolled back
    with the empty hand-off, so the event waited for ever and the count never came."""
    settings = load_settings(error_join_window_s=5, error_join_unjoined="drop",
                             reconcile={"state_dir": str(tmp_path)})
    state = CompletenessState(settings.reconcile)
    other = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    telemetry = Telemetry()
    ticker = Completeness(settings.reconcile, state, other, exporter=None, telemetry=telemetry)
    assert spans(other, request("nginx_error", ERROR)) == []
    ticker.on_handed_on(BatchStats(), NOW)
    assert ticker.report_error_events(AFTER_WINDOW) == 0
    assert other.errors.outcomes == {"received": 1, "dropped_unjoined": 1}
    assert telemetry.snapshot()["audit_error_events_total"] == 2  # received, dropped
    assert ticker.report_error_events(AFTER_WINDOW + 10**9) == 0  # decided once
    assert other.errors.outcomes == {"received": 1, "dropped_unjoined": 1}


def test_one_instance_still_reports_an_event_nobody_joined() -> None:
    single = _instance("report")
    assert spans(single, request("nginx_error", ERROR)) == []
    (alone,) = spans(single, request("nginx_access"), now=AFTER_WINDOW)
    assert span_attributes(alone)["audit.flags"] == ["truncated:upstream_closed"]
    assert single.errors.outcomes == {"received": 1, "unjoined": 1}


def test_across_instances_received_minus_joined_is_what_nobody_joined() -> None:
    """The Prometheus rule's arithmetic (otel/prometheus/alerts.yml): two instances, one joins
    the event, the other drops it; a second event joins nowhere."""
    owner, other = _instance("drop"), _instance("drop")
    lost = ERROR.replace("*7 ", "*99 ")
    for p in (owner, other):
        spans(p, request("nginx_error", ERROR, lost))
    spans(owner, request("nginx_access", ACCESS))
    for p in (owner, other):
        spans(p, request("nginx_access"), now=AFTER_WINDOW)
    received = max(p.errors.outcomes["received"] for p in (owner, other))
    joined = sum(p.errors.outcomes["joined"] for p in (owner, other))
    assert (received, joined) == (2, 1)


def test_a_retried_export_counts_once() -> None:
    p = _instance("drop")
    saved = p.errors.savepoint()
    spans(p, request("nginx_error", ERROR))
    p.errors.rollback(saved)  # the spans were not handed on: the collector sends it again
    spans(p, request("nginx_error", ERROR))
    assert p.errors.outcomes == {"received": 1}


def test_an_unknown_value_fails_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="error_join_unjoined"):
        load_settings(error_join_unjoined="ignore")


def test_while_records_come_again_no_event_is_given_up() -> None:
    """The collector retries a split request while another instance is down: the access record
    may still be queued behind it (resend hold: audit_guard.completeness)."""
    p = _instance("drop")
    spans(p, request("nginx_error", ERROR))
    p.errors.hold_until_ns = AFTER_WINDOW + 10 * 10**9
    assert spans(p, request("nginx_access"), now=AFTER_WINDOW) == []
    assert p.errors.outcomes == {"received": 1}  # still waiting
    (span,) = spans(p, request("nginx_access", ACCESS), now=AFTER_WINDOW + 10**9)
    assert "truncated:upstream_closed" in span_attributes(span)["audit.flags"]


def test_a_row_sent_again_after_the_window_is_flagged_again_during_the_hold() -> None:
    p = _instance("drop")
    spans(p, request("nginx_error", ERROR))
    (first,) = spans(p, request("nginx_access", ACCESS))
    p.errors.hold_until_ns = AFTER_WINDOW + 10 * 10**9
    spans(p, request("nginx_access"), now=AFTER_WINDOW)  # past the window: not forgotten
    (again,) = spans(p, request("nginx_access", ACCESS), now=AFTER_WINDOW + 10**9)
    assert again.SerializeToString() == first.SerializeToString()  # the same span, flagged
