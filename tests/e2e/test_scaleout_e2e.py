"""Scale-out end to end: two `audit-guard serve` instances behind the real collector's
`load_balancing` exporter (static resolver, collector-config/audit-guard-scaleout.yaml) give the
same verdicts as one instance.

demo upstream ← real nginx → access, error and app logs → real collector (trace id set from each
line, records routed by it; error-log events to both instances) → two processors (own OTLP and
admin ports, own state dirs, error_join_unjoined=drop) → a recording span backend. The traffic
mixes clean requests, 4xx/5xx, cut responses, cut streams (only the error log tells), requests
whose app audit line is dropped, and afterwards a duplicated access line and invalid lines.
The verdicts are compared, trace by trace, with `audit-guard replay` over the same files — the
same pipeline as one instance.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from demo.backends import repo_root, start_collector
from demo.nginx import NginxPaths, nginx_argv, render_nginx_conf
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from demo.traffic import DemoRequest, send
from tests.support.otlp_doubles import RecordingDownstream, span_attributes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SCALEOUT = repo_root() / "collector-config" / "audit-guard-scaleout.yaml"
WINDOW_S = 5
RESEND_HOLD_S = 20
SCENARIOS = [
    DemoRequest("POST", "/v1/chat-messages", body={"query": "hi"}),
    DemoRequest("GET", "/v1/datasets/ds-7/documents", user="u2", app="a2"),
    DemoRequest("GET", "/v1/datasets/ds-9/documents?status=403", user="u3"),
    DemoRequest("POST", "/v1/completion-messages?status=502", body={"inputs": {}}),
    DemoRequest("GET", "/v1/datasets/ds-1/documents/doc-2?cut=1", user="u4"),
    DemoRequest("POST", "/v1/chat-messages?anonymous=1", body={"query": "?"}),
    DemoRequest("POST", "/v1/chat-messages?cut=1", user="u5",
                body={"query": "hi", "response_mode": "streaming"}),
    DemoRequest("GET", "/v1/parameters?noaudit=1", user="u6"),
]
REQUESTS = 160  # 20 of each: enough that an even split is 35-65 % by a wide margin


@dataclass
class Instance:
    otlp_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics",
                                    timeout=5) as resp:
            return str(resp.read().decode())

    def counter(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            m = re.match(rf"{name}\{{([^}}]*)\}} (\S+)$", line)
            if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
                total += float(m.group(2))
        return total


@dataclass
class Chain:
    workdir: Path
    nginx: NginxPaths
    nginx_port: int
    app_log: Path
    backend: RecordingDownstream
    instances: list[Instance]
    processors: list[ManagedProcess]

    def stop_instance(self, index: int) -> None:
        self.processors[index].stop()

    def start_instance(self, index: int) -> None:
        """Start it again: the same ports and state dir."""
        self.processors[index] = _start_processor(
            self.workdir, index, self.instances[index], f"127.0.0.1:{self.backend.port}")


def _start_processor(wd: Path, index: int, instance: Instance, backend: str) -> ManagedProcess:
    proc = ManagedProcess(f"processor-{index}", [sys.executable, "-m", "audit_guard.cli", "serve"],
                          log_dir=wd, env={
        "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{instance.otlp_port}",
        "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{instance.admin_port}",
        "AUDIT_GUARD_EXPORTER__ENDPOINT": backend,
        "AUDIT_GUARD_RECONCILE__STATE_DIR": str(wd / f"state-{index}"),
        "AUDIT_GUARD_RECONCILE__WINDOW_S": str(WINDOW_S),
        "AUDIT_GUARD_ERROR_JOIN_WINDOW_S": str(WINDOW_S),
        "AUDIT_GUARD_ERROR_JOIN_UNJOINED": "drop",
        # The collector's retries are at most ~8 s apart in these tests' outages.
        "AUDIT_GUARD_RECONCILE__RESEND_HOLD_S": str(RESEND_HOLD_S),
        "AUDIT_GUARD_RECONCILE__RESTART_HOLD_S": str(RESEND_HOLD_S),
    }).start()
    proc.wait_ready(lambda: port_open(instance.otlp_port), timeout=60)
    return proc


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Iterator[Chain]:
    wd = tmp_path_factory.mktemp("scaleout")
    backend = RecordingDownstream()
    backend.server.start()
    procs: list[ManagedProcess] = []
    processors: list[ManagedProcess] = []
    try:
        nginx_port, upstream_port, status_port = free_port(), free_port(), free_port()
        paths = render_nginx_conf(wd / "nginx", nginx_port, upstream_port, status_port)
        instances = [Instance(), Instance()]
        endpoint = f"127.0.0.1:{backend.port}"
        for i, inst in enumerate(instances):
            processors.append(_start_processor(wd, i, inst, endpoint))
        app_log = wd / "app.log"
        collector, _ = start_collector(
            wd / "collector", access_log=paths.access_log, nginx_error_log=paths.error_log,
            app_log=app_log, processor_endpoint=f"127.0.0.1:{free_port()}",
            traces_endpoint=endpoint, vts_target=f"127.0.0.1:{free_port()}",
            overlays=[SCALEOUT], extra_env={
                f"AUDIT_GUARD_PROCESSOR_{i}_ENDPOINT": f"127.0.0.1:{inst.otlp_port}"
                for i, inst in enumerate(instances)})
        procs.append(collector)
        upstream = ManagedProcess("upstream", [
            sys.executable, "-m", "demo.upstream", "--port", str(upstream_port),
            "--log", str(app_log)], log_dir=wd).start()
        procs.append(upstream)
        upstream.wait_ready(lambda: port_open(upstream_port), timeout=30)
        nginx = ManagedProcess("nginx", nginx_argv(paths.conf), log_dir=wd).start()
        procs.append(nginx)
        nginx.wait_ready(lambda: port_open(nginx_port), timeout=30)
        yield Chain(wd, paths, nginx_port, app_log, backend, instances, processors)
    finally:
        for proc in [*reversed(procs), *processors]:  # front to back; a restarted one too
            proc.stop()
        backend.server.stop(0)


def _lines(path: Path) -> list[bytes]:
    return [x for x in path.read_bytes().splitlines() if x.strip()]


@dataclass
class Verdicts:
    flags: dict[str, set[str]]  # trace id → every flag on any of its records
    records: Counter[tuple[str, str]]  # (trace id, source) → distinct records (span ids)
    missing: set[str]  # traces with a missing_record


def _service_verdicts(backend: RecordingDownstream) -> Verdicts:
    spans = {(s.trace_id.hex(), s.span_id.hex()): s for s in backend.spans()}  # re-sends: once
    out = Verdicts({}, Counter(), set())
    for (trace, _), span in spans.items():
        a = span_attributes(span)
        flags = set(a.get("audit.flags", []))
        out.flags.setdefault(trace, set()).update(flags)
        if a.get("audit.missing"):
            out.missing.add(trace)
        elif a.get("audit.source") in ("nginx", "app"):
            out.records[(trace, a["audit.source"])] += 1
    return out


def _replay_verdicts(chain: Chain) -> Verdicts:
    proc = subprocess.run(
        [sys.executable, "-m", "audit_guard.cli", "replay", "--window", str(WINDOW_S),
         str(chain.nginx.access_log), str(chain.nginx.error_log), str(chain.app_log)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    out = Verdicts({}, Counter(), set())
    for obj in map(orjson.loads, proc.stdout.splitlines()):
        out.flags.setdefault(obj["trace_id"], set()).update(obj["flags"])
        if "missing_record" in obj["flags"]:
            out.missing.add(obj["trace_id"])
        elif obj["source"] in ("nginx", "app"):
            out.records[(obj["trace_id"], obj["source"])] += 1
    return out


Outcome = tuple[Verdicts, Verdicts, dict[str, list[bytes]]]


@pytest.fixture(scope="module")
def verdicts(chain) -> Outcome:
    return drive(chain)


def drive(chain: Chain, halfway: Callable[[], None] = lambda: None,
          after: Callable[[], None] = lambda: None) -> Outcome:
    """Send the traffic (`halfway` runs in the middle of it, `after` once it was sent), add the
    odd lines, wait until everything went through; the service's verdicts and replay's."""
    requests = [SCENARIOS[i % len(SCENARIOS)] for i in range(REQUESTS)]
    for n, req in enumerate(requests):
        if n == len(requests) // 2:
            halfway()
        send(f"http://127.0.0.1:{chain.nginx_port}", req)
    access = chain.nginx.access_log
    wait_until(lambda: len(_lines(access)) >= REQUESTS, 60, "nginx to log every request")
    # After the traffic: a line written twice, a cut access line, lines that are no records.
    with access.open("ab") as f:
        f.write(_lines(access)[0] + b"\n")
        f.write(b'{"msec":"1764165601.300","request_id":"' + b"ab" * 16
                + b'","request_method":"POST","request_u\n')
    with chain.app_log.open("ab") as f:
        f.write(b"this is not an audit record\n")
        f.write(b'{"ts":"2025-11-26T14:00:01.251Z","trace_id":"' + b"cd" * 16 + b'","sev\n')
    after()
    noaudit = sum("noaudit=1" in r.path for r in requests)
    expected_records = len(_lines(access)) + len(_lines(chain.app_log))

    def settled() -> bool:
        got = _service_verdicts(chain.backend)
        return sum(got.records.values()) >= expected_records and len(got.missing) >= noaudit

    wait_until(settled, 180, "every record and every missing_record through both instances")
    # Past the windows again: no false missing_record may come late, no orphan error span.
    time.sleep(2 * WINDOW_S + 2)
    files = {"access": _lines(access), "app": _lines(chain.app_log)}
    return _service_verdicts(chain.backend), _replay_verdicts(chain), files


def test_the_same_verdicts_as_one_instance(verdicts) -> None:
    service, replay, _ = verdicts
    assert service.records == replay.records  # no request lost, none counted twice
    assert service.missing == replay.missing  # no false missing_record, none missed
    assert len(service.missing) == REQUESTS // len(SCENARIOS)  # the dropped app lines
    differ = {t: (service.flags.get(t), replay.flags.get(t))
              for t in service.flags.keys() | replay.flags.keys()
              if service.flags.get(t) != replay.flags.get(t)}
    assert not differ
    seen = Counter(f for flags in service.flags.values() for f in flags)
    for flag in ("truncated:upstream_closed", "truncated:response_short", "missing_record",
                 "missing_field:user_id", "duplicate", "truncated:json_cut", "malformed"):
        assert seen[flag], flag  # the mix produced every kind of verdict compared


def test_every_cut_stream_is_reported_once(chain, verdicts) -> None:
    _, _, files = verdicts
    cut_streams = [orjson.loads(x)["request_id"] for x in files["access"]
                   if b"/v1/chat-messages?cut=1" in x]
    assert len(cut_streams) == REQUESTS // len(SCENARIOS)
    flagged = Counter(s.trace_id.hex() for s in
                      {(s.trace_id, s.span_id): s for s in chain.backend.spans()}.values()
                      if "truncated:upstream_closed" in span_attributes(s).get("audit.flags", []))
    assert {rid: flagged[rid] for rid in cut_streams} == dict.fromkeys(cut_streams, 1)
    # and no error-log event reported on its own by an instance that did not hold its request
    lone = [s for s in chain.backend.spans()
            if span_attributes(s).get("audit.source") == "nginx_error"
            and span_attributes(s).get("audit.trace_id.generated")]
    assert lone == []


def test_error_events_are_joined_by_exactly_one_instance(chain, verdicts) -> None:
    def outcome(name: str) -> list[float]:
        return [i.counter("audit_error_events_total", outcome=name) for i in chain.instances]

    def decided() -> bool:  # a resend hold (reconcile.resend_hold_s) may keep some waiting
        return [j + d for j, d in zip(outcome("joined"), outcome("dropped_unjoined"),
                                      strict=True)] == outcome("received")

    wait_until(decided, 3 * RESEND_HOLD_S, "every instance to decide every error-log event")
    received, joined, dropped = outcome("received"), outcome("joined"), outcome("dropped_unjoined")
    assert received[0] == received[1] >= REQUESTS // len(SCENARIOS)  # every instance, all
    assert sum(joined) == received[0]
    assert [j + d for j, d in zip(joined, dropped, strict=True)] == received


def test_both_instances_handle_35_to_65_percent(chain, verdicts) -> None:
    handled = [sum(i.counter("audit_records_total", source=s) for s in ("nginx", "app"))
               for i in chain.instances]
    total = sum(handled)
    _, _, files = verdicts
    assert total >= len(files["access"]) + len(files["app"])  # every line, once at least
    for share in handled:
        assert 0.35 <= share / total <= 0.65, handled
