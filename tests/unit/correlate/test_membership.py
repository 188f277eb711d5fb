"""Membership changes of the scale-out ring (audit_guard.correlate.membership): a request whose
Nginx record was logged within the grace of a change is counted, not reported missing_record;
outside the grace nothing changes. The resolver is a function the test controls (a seam: the
answers a DNS server would give), everything else is the real service: OTLP server, pipeline,
reconciler, completeness ticker, a recording span backend."""

from __future__ import annotations

import logging
import socket
import time

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

from audit_guard.completeness import Completeness, CompletenessState
from audit_guard.config import ConfigError, load_settings
from audit_guard.correlate.membership import MembershipWatch
from audit_guard.correlate.missing import Due
from audit_guard.otlp.exporter import SpanExporter
from audit_guard.otlp.server import OtlpServer
from audit_guard.pipeline import Pipeline
from audit_guard.telemetry import Telemetry
from demo.procs import free_port, wait_until
from tests.unit.correlate.test_reconcile import S, app_line, logs, nginx_line, rid

GRACE_S = 20
TWO = frozenset({"10.0.0.1", "10.0.0.2"})
THREE = TWO | {"10.0.0.3"}


class Answers:
    """What the DNS name resolves to now: a set of addresses, or an error to raise."""

    def __init__(self, answer: frozenset[str] | OSError = TWO) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def __call__(self, name: str) -> frozenset[str]:
        self.asked.append(name)
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def logged_at(rid_: str, t_ns: int) -> str:
    """An audited, proxied Nginx request logged at `t_ns`."""
    return orjson.dumps({**orjson.loads(nginx_line(rid_)), "msec": f"{t_ns / S:.3f}"}).decode()


def due(t_ns: int) -> Due:
    return Due(bytes(16), bytes(8), t_ns, 200, "POST", "/v1/chat-messages")


# ------------------------------------------------------------------------- noticing a change


def test_a_different_set_of_addresses_is_a_change_and_nothing_else_is() -> None:
    answers = Answers()
    watch = MembershipWatch(GRACE_S, 10, dns_name="processors.example", resolver=answers)
    t = time.time_ns()
    assert watch.poll(t) is None  # the starting set
    assert watch.poll(t + S) is None  # the same set
    answers.answer = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert watch.poll(t + 2 * S) is None  # DNS down is not a ring change
    assert watch.addresses == TWO
    answers.answer = TWO
    assert watch.poll(t + 3 * S) is None  # back, unchanged
    answers.answer = THREE
    change = watch.poll(t + 4 * S)
    assert change is not None and change.trigger == "dns" and "10.0.0.3" in change.detail
    assert watch.last_change is change
    answers.answer = TWO  # scaled down again: another change
    assert watch.poll(t + 5 * S) is not None
    assert answers.asked == ["processors.example"] * 6


def test_the_watch_polls_in_its_own_thread() -> None:
    answers = Answers()
    watch = MembershipWatch(GRACE_S, 10, dns_name="processors.example", poll_s=0.02,
                            resolver=answers)
    watch.start()  # resolves the starting set at once
    try:
        assert watch.addresses == TWO and watch.last_change is None
        answers.answer = THREE
        wait_until(lambda: watch.last_change is not None, 5, "the change to be noticed")
        assert watch.last_change is not None and watch.last_change.trigger == "dns"
    finally:
        watch.stop()
    asked = len(answers.asked)
    time.sleep(0.1)
    assert len(answers.asked) == asked  # stopped


def test_without_a_dns_name_nothing_is_resolved_and_nothing_kept_back() -> None:
    answers = Answers()
    watch = MembershipWatch(GRACE_S, 10, resolver=answers)
    watch.start()
    t = time.time_ns()
    assert watch.poll(t) is None
    assert answers.asked == []
    assert watch.split([due(t)], t) == ([due(t)], [])


def test_the_grace_covers_requests_logged_either_side_of_the_change(caplog) -> None:
    watch = MembershipWatch(GRACE_S, 10)
    c = time.time_ns()
    watch.changed(c, "api")
    inside = [due(c - (GRACE_S - 1) * S), due(c), due(c + (GRACE_S - 1) * S), due(0)]
    outside = [due(c - (GRACE_S + 1) * S), due(c + GRACE_S * S)]
    report, kept = watch.split(inside + outside, c + S)
    assert (report, kept) == (outside, inside)  # due(0): no time, judged by now (c + 1 s)
    watch.count(kept, c + S)
    assert watch.suppressed_total == 4
    with caplog.at_level(logging.WARNING, "audit_guard.correlate.membership"):
        assert watch.expire(c + (GRACE_S + 9) * S) == []  # still open
        (closed,) = watch.expire(c + (GRACE_S + 10) * S)
    assert closed.suppressed == 4
    assert [r.getMessage() for r in caplog.records if "kept back" in r.getMessage()] == [
        f"membership change (api) at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(c / S))}"
        f": 4 missing_record reports kept back (their Nginx record was logged within "
        f"{GRACE_S} s of the change)"]
    # Closed: a request of that time is reported again.
    assert watch.split([due(c)], c + (GRACE_S + 11) * S) == ([due(c)], [])


def test_config_defaults_off_and_checks_the_name() -> None:
    settings = load_settings(reconcile={"window_s": 7})
    assert settings.reconcile.membership_dns is None
    assert settings.reconcile.grace_s() == 14  # two windows
    assert load_settings(reconcile={"membership_grace_s": 5}).reconcile.grace_s() == 5
    for bad in ("http://processors:4327", "processors:4327", "-x.example", ""):
        with pytest.raises(ConfigError, match="reconcile.membership_dns"):
            load_settings(reconcile={"membership_dns": bad})


# ---------------------------------------------------------------------------- in the service


@pytest.fixture
def service(downstream, tmp_path):
    port = free_port()
    settings = load_settings(
        server={"listen": f"127.0.0.1:{port}"},
        exporter={"endpoint": f"127.0.0.1:{downstream.port}", "max_wait_s": 1.5},
        reconcile={"window_s": 2, "state_dir": str(tmp_path),
                   "membership_dns": "processors.example", "membership_poll_s": 3600,
                   "membership_grace_s": GRACE_S},
    )
    answers = Answers()
    state = CompletenessState(settings.reconcile, resolver=answers)
    pipeline = Pipeline(settings, reconciler=state.requests, counters=state.counters)
    telemetry = Telemetry()
    server = OtlpServer(settings.server, pipeline, SpanExporter(settings.exporter), telemetry)
    server.completeness = Completeness(settings.reconcile, state, pipeline, server.exporter,
                                       telemetry, lock=server.pipeline_lock)
    server.start()
    server.completeness.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server.completeness, logs_service_pb2_grpc.LogsServiceStub(channel), answers, telemetry
    channel.close()
    server.completeness.stop()
    server.stop()


def missing_spans(downstream, before: int) -> list[str]:
    return [s.name for s in downstream.spans()[before:] if s.name.startswith("missing")]


def test_straddling_requests_are_counted_not_reported(service, downstream) -> None:
    completeness, stub, answers, telemetry = service
    now = time.time_ns()
    stub.Export(logs("app", app_line(rid())), timeout=10)  # arms the reconciler
    answers.answer = THREE  # an instance was added
    assert completeness.membership.poll(now) is not None
    # Two requests logged either side of the change: their app records went elsewhere.
    stub.Export(logs("nginx", logged_at(rid(), now - S), logged_at(rid(), now + S)),
                timeout=10)
    before = len(downstream.spans())
    completeness.tick(now + 4 * S)  # past the window (2 s)
    assert missing_spans(downstream, before) == []
    snapshot = telemetry.snapshot()
    assert snapshot["audit_missing_suppressed_total"] == 2
    assert snapshot["audit_membership_changes_total"] == 1
    assert snapshot["audit_records_missing_total"] == 0
    assert completeness.requests.pending() == 0  # not reported at the next tick either
    # Nor counted missing in the completeness ratio: none of them was decided either way.
    assert completeness.requests.completeness(now + 4 * S, 3600 * S) is None
    completeness.tick(now + 5 * S)
    assert missing_spans(downstream, before) == []


def test_outside_the_grace_a_missing_record_is_reported(service, downstream) -> None:
    completeness, stub, answers, telemetry = service
    now = time.time_ns()
    stub.Export(logs("app", app_line(rid())), timeout=10)
    answers.answer = THREE
    completeness.membership.poll(now - 2 * GRACE_S * S)  # long before this request
    stub.Export(logs("nginx", logged_at(rid(), now)), timeout=10)
    before = len(downstream.spans())
    completeness.tick(now + 4 * S)
    assert missing_spans(downstream, before) == [
        "missing app audit record: POST /v1/chat-messages"]
    assert telemetry.snapshot()["audit_missing_suppressed_total"] == 0
    assert telemetry.snapshot()["audit_records_missing_total"] == 1
