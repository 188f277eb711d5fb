"""The dead-letter spool (processor/audit_guard/otlp/spool.py) and `audit-guard resend`.

Real programs only: kill -9 of a real child process mid-append, a real tmpfs that runs out of
space, and `audit-guard resend` run as a real subprocess against a real gRPC TraceService on
loopback (tests/otlp_doubles.RecordingDownstream, the recording test double for the backend).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.admin import AdminState, create_app
from audit_guard.config import load_settings
from audit_guard.otlp.spool import (
    CORRUPT_DIR,
    DeadLetterSpool,
    SpoolCorrupt,
    SpoolFull,
    SpoolUsage,
)
from audit_guard.rules import RuleRegistry
from demo.procs import (
    ManagedProcess,
    free_port,
    http_ok,
    port_open,
    repo_root,
    wait_until,
)
from tests.support.otlp_doubles import logs_request

MIB = 1024 * 1024


def span_request(n: int, tag: int) -> ExportTraceServiceRequest:
    """A request with n spans whose ids say which entry they belong to."""
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i in range(n):
        span = spans.add()
        span.trace_id = tag.to_bytes(8, "big") + i.to_bytes(8, "big")
        span.span_id = (tag * 1000 + i + 1).to_bytes(8, "big")
        span.name = f"GET /v1/entry/{tag}/{i}"
        span.start_time_unix_nano = 1_764_165_600_000_000_000 + i
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
    return req


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------------- the spool


def test_append_read_remove_oldest_first(tmp_path: Path) -> None:
    seen: list[SpoolUsage] = []
    spool = DeadLetterSpool(tmp_path / "dl", 4 * MIB, on_change=seen.append)
    assert seen == [SpoolUsage(0, 0, 0)]
    later = spool.append(b"later", 2, "invalid_argument", now_ns=2_000)
    first = spool.append(b"first", 3, "partial_success", now_ns=1_000)
    assert [e.path for e in spool.entries()] == [first.path, later.path]
    assert spool.read(first) == b"first" and spool.read(later) == b"later"
    assert spool.usage() == SpoolUsage(2, 5, first.size + later.size)
    assert seen[-1] == spool.usage()
    # The header says what the entry is, readable with head(1).
    head = first.path.read_bytes()[:200]
    assert head.startswith(b"AUDIT-GUARD-DEADLETTER 1\n") and b'"reason":"partial_success"' in head
    spool.remove(first)
    assert not first.path.exists()
    assert spool.usage() == SpoolUsage(1, 2, later.size) == seen[-1]
    # Another process (resend) removing an entry is seen by the next listing.
    later.path.unlink()
    assert spool.entries() == [] and spool.usage() == SpoolUsage(0, 0, 0)
    spool.remove(later)  # already gone: fine


def test_summary_for_the_status_page(tmp_path: Path) -> None:
    spool = DeadLetterSpool(tmp_path, 4 * MIB)
    spool.append(b"a", 3, "partial_success", now_ns=5_000)
    spool.append(b"b", 4, "invalid_argument", now_ns=7_000)
    spool.append(b"c", 1, "partial_success", now_ns=9_000)
    s = spool.summary()
    assert (s.entries, s.spans, s.oldest_unix_nano, s.corrupt_files) == (3, 8, 5_000, 0)
    assert s.reasons == {"partial_success": 4, "invalid_argument": 4}
    assert s.max_bytes == 4 * MIB and s.bytes == spool.usage().bytes


KILL_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from audit_guard.otlp.spool import DeadLetterSpool
    spool = DeadLetterSpool(Path(sys.argv[1]), 1 << 40)
    i = 0
    while True:
        # 24 MiB per entry: the write + fsync takes long enough to be caught in the middle.
        spool.append(bytes([i % 251]) * (24 << 20), i, f"entry {i}", now_ns=1_000 + i)
        i += 1
""")


def test_kill_9_mid_append_keeps_complete_entries_and_no_partial(tmp_path: Path) -> None:
    directory = tmp_path / "dl"
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(directory)], cwd=repo_root())
    try:
        # Kill it while a temp file is being written, after at least two complete entries.
        def mid_append() -> bool:
            assert child.poll() is None, "the appending child died on its own"
            found = names(directory) if directory.exists() else []
            return (sum(n.endswith(".dlq") and not n.startswith(".") for n in found) >= 2
                    and any(n.startswith(".tmp-") for n in found))

        wait_until(mid_append, 60, "the child to be in the middle of an append", interval=0.001)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.wait()
    assert any(n.startswith(".tmp-") for n in names(directory)), "not killed mid-append"
    spool = DeadLetterSpool(directory, 1 << 40)  # the restart
    assert not any(n.startswith(".tmp-") for n in names(directory)), "partial entry kept"
    entries = spool.entries()
    assert len(entries) >= 2
    for i, entry in enumerate(entries):  # complete entries kept, in order, byte for byte
        assert (entry.spans, entry.reason, entry.spooled_unix_nano) == (i, f"entry {i}", 1_000 + i)
        assert spool.read(entry) == bytes([i % 251]) * (24 << 20)
    assert spool.corrupt_files() == 0


def test_a_temp_file_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    DeadLetterSpool(tmp_path, 4 * MIB)
    tmp = tmp_path / ".tmp-00000000000000000001-00000001-abcd.dlq"
    with tmp.open("wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as append() holds it while writing
        DeadLetterSpool(tmp_path, 4 * MIB)  # e.g. `resend` starting next to `serve`
        assert tmp.exists()
    DeadLetterSpool(tmp_path, 4 * MIB)  # the writer is gone (lock released): removed
    assert not tmp.exists()


def test_spool_full_raises_and_writes_nothing(tmp_path: Path) -> None:
    spool = DeadLetterSpool(tmp_path, 1 * MIB)
    kept = spool.append(b"x" * 600_000, 10, "partial_success", now_ns=1)
    before = names(tmp_path)
    with pytest.raises(SpoolFull) as err:
        spool.append(b"y" * 600_000, 12, "partial_success", now_ns=2)
    assert isinstance(err.value, OSError)  # callers treat it like a full disk: UNAVAILABLE
    assert "deadletter.max_bytes=1048576" in str(err.value) and "audit-guard resend" in str(
        err.value)
    assert names(tmp_path) == before and spool.usage().entries == 1
    spool.remove(kept)  # resend delivered it: room again
    spool.append(b"y" * 600_000, 12, "partial_success", now_ns=2)


def test_corrupt_entries_are_moved_aside_and_reported(tmp_path: Path, caplog) -> None:
    spool = DeadLetterSpool(tmp_path, 4 * MIB)
    good = spool.append(b"good payload", 1, "partial_success", now_ns=1)
    cut = spool.append(b"cut payload", 1, "partial_success", now_ns=2)
    flipped = spool.append(b"flipped payload", 1, "partial_success", now_ns=3)
    cut.path.write_bytes(cut.path.read_bytes()[:-4])  # cut short (a torn copy)
    data = bytearray(flipped.path.read_bytes())
    data[-1] ^= 0x01  # one bit flipped in the payload: only the checksum sees it
    flipped.path.write_bytes(bytes(data))
    (tmp_path / "00000000000000000000-junk.dlq").write_bytes(b"not an entry at all")
    with caplog.at_level(logging.ERROR, logger="audit_guard.otlp.spool"):
        restarted = DeadLetterSpool(tmp_path, 4 * MIB)
    assert [e.path for e in restarted.entries()] == [good.path, flipped.path]
    assert "cut short" in caplog.text and "00000000000000000000-junk.dlq" in caplog.text
    with pytest.raises(SpoolCorrupt, match="checksum"):
        restarted.read(flipped)
    assert [e.path for e in restarted.entries()] == [good.path]
    assert restarted.read(good) == b"good payload"
    assert sorted(os.listdir(tmp_path / CORRUPT_DIR)) == sorted(
        [cut.path.name, flipped.path.name, "00000000000000000000-junk.dlq"])
    assert restarted.corrupt_files() == 3 and restarted.summary().corrupt_files == 3


CONCURRENT_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from audit_guard.otlp.spool import DeadLetterSpool
    spool = DeadLetterSpool(Path(sys.argv[1]), 1 << 30)
    for i in range(50):
        spool.append(b"child %d" % i, 1, "child", now_ns=10_000 + i)
""")


def test_concurrent_appends_from_threads_and_another_process(tmp_path: Path) -> None:
    spool = DeadLetterSpool(tmp_path, 1 << 30)
    child = subprocess.Popen([sys.executable, "-c", CONCURRENT_CHILD, str(tmp_path)],
                             cwd=repo_root())
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(25):
                spool.append(b"thread %d item %d" % (t, i) * 100, 2, f"t{t}", now_ns=i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert child.wait(60) == 0
    assert not errors
    entries = spool.entries()
    payloads = [spool.read(e) for e in entries]
    expected = {b"thread %d item %d" % (t, i) * 100 for t in range(8) for i in range(25)}
    expected |= {b"child %d" % i for i in range(50)}
    assert len(payloads) == 250 and set(payloads) == expected
    assert spool.usage() == SpoolUsage(250, 8 * 25 * 2 + 50, sum(e.size for e in entries))


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A real 64 KiB tmpfs (needs root, as `make test` runs here); always unmounted."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_raises_oserror_and_leaves_no_partial_entry(tiny_tmpfs: Path) -> None:
    spool = DeadLetterSpool(tiny_tmpfs / "dl", 1 << 30)  # the disk is the limit, not max_bytes
    small = spool.append(b"s" * 1000, 1, "partial_success", now_ns=1)
    with pytest.raises(OSError) as err:
        spool.append(b"B" * 200_000, 5, "partial_success", now_ns=2)
    assert not isinstance(err.value, SpoolFull) and err.value.errno == 28  # ENOSPC
    assert names(tiny_tmpfs / "dl") == [small.path.name]  # no temp file, no partial entry
    restarted = DeadLetterSpool(tiny_tmpfs / "dl", 1 << 30)
    assert [restarted.read(e) for e in restarted.entries()] == [b"s" * 1000]
    restarted.append(b"t" * 1000, 1, "partial_success", now_ns=3)  # the space came back


# -------------------------------------------------------------------------- audit-guard resend


def resend(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit_guard.cli", "resend", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, cwd=repo_root(),
        env={k: v for k, v in os.environ.items() if not k.startswith("AUDIT_GUARD_")},
    )


@pytest.fixture
def spooled(tmp_path: Path, downstream):
    """Three spooled requests (oldest first) and a config pointing resend at the downstream."""
    directory = tmp_path / "state" / "deadletter"
    spool = DeadLetterSpool(directory, 64 * MIB)
    requests = [span_request(n, tag) for tag, n in enumerate((3, 1, 2), start=1)]
    for i, req in enumerate(requests):
        spool.append(req.SerializeToString(), len(req.resource_spans[0].scope_spans[0].spans),
                      "invalid_argument" if i else "partial_success", now_ns=1_000 + i)
    config = tmp_path / "audit-guard.yaml"
    config.write_text(textwrap.dedent(f"""
        exporter:
          endpoint: 127.0.0.1:{downstream.port}
          max_wait_s: 1.5
          retry_initial_backoff_s: 0.1
        reconcile:
          state_dir: {tmp_path / "state"}
    """))
    return spool, requests, config


def test_resend_keeps_everything_until_downstream_accepts(spooled, downstream) -> None:
    spool, requests, config = spooled
    # Downstream still refuses for good (a permanent code): stop at the first, keep all.
    downstream.fail_with = grpc.StatusCode.INVALID_ARGUMENT
    run = resend(config)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "3 entries, 6 spans" in run.stdout and "partial_success (3 spans)" in run.stdout
    assert "STOPPED at" in run.stdout and "refused it for good again" in run.stdout
    assert "3 entries (6 spans) remain" in run.stdout
    assert spool.usage().entries == 3
    # Downstream unavailable: retried until exporter.max_wait_s, then stop, keep all.
    downstream.fail_with = grpc.StatusCode.UNAVAILABLE
    run = resend(config)
    assert run.returncode == 1 and "did not accept it in time" in run.stdout, run.stdout
    assert spool.usage().entries == 3
    # A partial success again: not accepted, kept.
    downstream.fail_with, downstream.reject = None, 1
    run = resend(config)
    assert run.returncode == 1 and "refused it for good again: partial_success" in run.stdout
    assert spool.usage().entries == 3
    # The cause is fixed: everything goes, oldest first, byte for byte as it was spooled.
    downstream.reject = 0
    downstream.requests.clear()
    run = resend(config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "done: 3 entries (6 spans) delivered; 0 entries (0 spans) remain" in run.stdout
    assert downstream.requests == requests
    assert spool.entries() == []
    again = resend(config)
    assert again.returncode == 0 and "nothing to resend" in again.stdout


def test_resending_an_entry_twice_sends_identical_spans(spooled, downstream) -> None:
    spool, requests, config = spooled
    downstream.reject = 1  # accepted (recorded), but answered with a partial success: kept
    assert resend(config).returncode == 1
    downstream.reject = 0
    assert resend(config).returncode == 0
    # The first request went twice; both times exactly the same spans (same ids): idempotent.
    assert downstream.requests == [requests[0], *requests]


def test_resend_skips_a_corrupt_entry_and_says_so(spooled, downstream) -> None:
    spool, requests, config = spooled
    middle = spool.entries()[1]
    middle.path.write_bytes(middle.path.read_bytes()[:-1])
    run = resend(config)
    assert run.returncode == 1  # not everything was delivered
    assert "corrupt" in run.stdout and str(spool.corrupt_dir) in run.stdout
    assert downstream.requests == [requests[0], requests[2]]
    assert spool.entries() == [] and spool.corrupt_files() == 1


def test_resend_dry_run_endpoint_and_usage_errors(spooled, downstream, tmp_path: Path) -> None:
    spool, requests, config = spooled
    run = resend(config, "--dry-run")
    assert run.returncode == 1 and "dry run: nothing sent" in run.stdout
    assert run.stdout.count("spans, spooled") == 3 and downstream.requests == []
    bad = resend(config, "--endpoint", "no-port")
    assert bad.returncode == 2 and "--endpoint" in bad.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text("log_level: info\n")
    none = resend(plain)
    assert none.returncode == 2 and "no dead-letter spool is configured" in none.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("deadletter:\n  max_bytez: 5\n")
    assert resend(typo).returncode == 2
    # --endpoint wins over exporter.endpoint: point the config elsewhere, resend still arrives.
    config.write_text(config.read_text().replace(str(downstream.port), "1"))
    run = resend(config, "--endpoint", f"127.0.0.1:{downstream.port}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert downstream.requests == requests


def test_config_deadletter_dir_defaults_under_the_state_dir(tmp_path: Path) -> None:
    assert load_settings().deadletter_dir() is None
    assert load_settings(reconcile={"state_dir": tmp_path}).deadletter_dir() == (
        tmp_path / "deadletter")
    assert load_settings(reconcile={"state_dir": tmp_path},
                         deadletter={"dir": tmp_path / "x"}).deadletter_dir() == tmp_path / "x"
    from audit_guard.config import ConfigError

    with pytest.raises(ConfigError, match="deadletter.max_bytes"):
        load_settings(deadletter={"max_bytes": 1000})



# ------------------------------------------------------------- serve → spool → status → resend

NGINX_LINE = json.dumps(
    {"msec": "1764165600.5", "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
     "request_method": "GET", "uri": "/v1/parameters", "status": "200",
     "user_id": "u1", "app_id": "a1"})


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def chromium_dom(url: str, tmp_path: Path) -> str:
    """The page's DOM after its script ran, from the real headless chromium."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run scripts/bootstrap"
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120).stdout


def test_status_api_and_page_show_the_spool(tmp_path: Path) -> None:
    state = AdminState()
    client = TestClient(create_app(state, RuleRegistry()))
    assert client.get("/api/status").json()["deadletter"] is None  # no spool configured
    assert "no spool configured" in client.get("/").text
    spool = DeadLetterSpool(tmp_path / "d<i>r", 4 * MIB)
    state.set_deadletter(spool.summary())
    body = client.get("/api/status").json()["deadletter"]
    assert (body["entries"], body["spans"], body["oldest_unix_nano"]) == (0, 0, None)
    assert 'id="deadletter" class="ok">0 entries' in client.get("/").text
    spool.append(b"p", 3, "<script>x</script>", now_ns=1_764_165_600_000_000_000)
    state.set_deadletter(spool.summary())
    body = client.get("/api/status").json()["deadletter"]
    assert body["reasons"] == {"<script>x</script>": 3} and body["max_bytes"] == 4 * MIB
    assert body["directory"] == str(tmp_path / "d<i>r")
    page = client.get("/").text
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "d&lt;i&gt;r" in page and "oldest spooled 2025-11-26 14:00:00Z" in page


def test_serve_spools_what_downstream_refuses_and_resend_delivers_it(tmp_path, downstream):
    port, admin = free_port(), free_port()
    spool_dir = tmp_path / "spool"
    config = tmp_path / "audit-guard.yaml"
    config.write_text(textwrap.dedent(f"""
        server:
          listen: 127.0.0.1:{port}
        admin:
          listen: 127.0.0.1:{admin}
        exporter:
          endpoint: 127.0.0.1:{downstream.port}
          max_wait_s: 3
          retry_initial_backoff_s: 0.1
        reconcile:
          enabled: false
        deadletter:
          dir: {spool_dir}
          max_bytes: 2097152
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_GUARD_")}
    serve = ManagedProcess("serve", [sys.executable, "-m", "audit_guard.cli", "serve", "--config",
                                     config], tmp_path, env=env, cwd=repo_root())
    serve.start()
    try:
        serve.wait_ready(lambda: port_open(port) and http_ok(f"http://127.0.0.1:{admin}/healthz"))
        status = get_json(f"http://127.0.0.1:{admin}/api/status")["deadletter"]
        assert status["entries"] == 0 and status["max_bytes"] == 2097152
        downstream.fail_with = grpc.StatusCode.INVALID_ARGUMENT  # a permanent code
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        stub.Export(logs_request(NGINX_LINE, NGINX_LINE), timeout=20)  # acked: spooled, durable
        channel.close()
        spool = DeadLetterSpool(spool_dir, 2097152)
        assert spool.usage().spans == 2
        spooled = [ExportTraceServiceRequest.FromString(spool.read(e)) for e in spool.entries()]

        def shown(entries: int) -> bool:
            return get_json(f"http://127.0.0.1:{admin}/api/status")["deadletter"][
                "entries"] == entries

        wait_until(lambda: shown(1), 15, "the status API to show the spooled entry")
        status = get_json(f"http://127.0.0.1:{admin}/api/status")["deadletter"]
        assert status["spans"] == 2 and status["reasons"] == {"invalid_argument": 2}
        assert status["oldest_unix_nano"] is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/", timeout=5) as resp:
            page = resp.read().decode()
        assert "Dead-letter spool" in page and "invalid_argument" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert re.search(r'^audit_spans_deadlettered_total\{.*reason="invalid_argument".*\} 2\.0$',
                         metrics, re.M), metrics
        assert re.search(r"^audit_deadletter_spans\{.*\} 2\.0$", metrics, re.M)
        assert re.search(r"^audit_deadletter_max_bytes\{.*\} 2\.097152e\+06$", metrics, re.M)
        dom = chromium_dom(f"http://127.0.0.1:{admin}/", tmp_path)
        assert 'id="updated">updated ' in dom, dom[-2000:]  # the refresh script ran
        assert re.search(r'id="deadletter" class="bad">1 entries, 2 spans, \d+ bytes', dom), dom
        assert "<td>invalid_argument</td><td>2</td>" in dom

        # The cause is fixed; resend runs next to the running service.
        downstream.fail_with = None
        run = resend(config)
        assert run.returncode == 0, run.stdout + run.stderr
        assert downstream.requests == spooled  # the very spans that were refused
        wait_until(lambda: shown(0), 15, "the status API to show the spool emptied by resend")
    finally:
        serve.stop()
