"""Log rotation under load loses no line and duplicates none (issue #11 item 4).

Real nginx (the demo config, in front of the demo upstream) writes its JSON access log under
steady traffic; the real collector reads it with the shipped config (live name + `<name>.1`); the
real `logrotate -f` rotates it several times meanwhile:

- rename + `postrotate nginx -s reopen`, with a slow reopen (`sleep 1` first) so nginx writes
  into `access.log.1` for a while — the lines a live-name-only reader lost;
- copytruncate;
both with `compress` + `delaycompress`, so older rotations end up as `.2.gz`, `.3.gz`.

Afterwards every line nginx wrote (summed over all files, the .gz ones gunzipped) must have
reached the recording OTLP server standing in for the processor, each exactly once (by
request_id). `compress` without `delaycompress` loses lines by design (the `.1` is gzipped
before it was read): the doctor must fail that config, which is checked instead of run.
A copy seen half-written (a big file's copytruncate) is forced once, deterministically.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_guard.doctor.findings import Level
from audit_guard.doctor.logrotate import AuditLog, check_logrotate
from demo.backends import start_collector
from demo.nginx import nginx_argv
from demo.procs import ManagedProcess, free_port, tool_path
from tests.e2e.test_collector_config import FakeProcessor
from tests.e2e.test_collector_crash import LineWriter, settle
from tests.support.nginx_upstream import NginxUpstream, nginx_with_upstream

pytestmark = pytest.mark.e2e

ROTATIONS = 3
SECONDS_BETWEEN = 2.0
CLIENTS = 2

# {logs}: the rotated files; {reopen}: the command that makes this nginx reopen its logs.
RENAME = """\
{logs} {{
    rotate 5
    compress
    delaycompress
    missingok
    sharedscripts
    postrotate
        sleep 1
        {reopen}
    endscript
}}
"""
COPYTRUNCATE = """\
{logs} {{
    rotate 5
    copytruncate
    compress
    delaycompress
    missingok
}}
"""


class Traffic:
    """`CLIENTS` keep-alive clients sending requests through nginx as fast as they get answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("GET", "/v1/parameters",
                             headers={"Authorization": "Bearer app-rotation-test"})
                conn.getresponse().read()
                with self._lock:
                    self.sent += 1
            except (OSError, http.client.HTTPException):
                conn.close()  # keep-alive closed by the server: reconnect
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def write_logrotate_conf(template: str, stack: NginxUpstream, path: Path) -> Path:
    logs = f"{stack.paths.access_log} {stack.paths.error_log}"
    path.write_text(template.format(logs=logs,
                                    reopen=shlex.join([*nginx_argv(stack.paths.conf), "-s",
                                                       "reopen"])))
    path.chmod(0o644)  # logrotate ignores group/world-writable configs
    return path


def logrotate(conf: Path, state: Path) -> None:
    """One forced rotation by the real logrotate (we run as root, as logrotate does)."""
    binary = shutil.which("logrotate") or "/usr/sbin/logrotate"
    proc = subprocess.run([binary, "--force", "--state", str(state), str(conf)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def request_ids_written(access_log: Path) -> list[str]:
    """Every request_id nginx wrote, over the live file and all rotations (.gz read too)."""
    ids: list[str] = []
    for f in sorted(access_log.parent.glob(access_log.name + "*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            ids.extend(json.loads(line)["request_id"] for line in fh if line.strip())
    return ids


def delivered_ids(fake: FakeProcessor, access_log: Path) -> list[str]:
    """request_ids of the access-log records (live file or a rotated name) received."""
    return [json.loads(body)["request_id"] for path, body in fake.bodies_by_file()
            if path.startswith(str(access_log))]


@pytest.fixture
def log_dir() -> Iterator[Path]:
    """nginx's work/log directory, reachable by its `nobody` workers: on a reopen each worker
    opens the log files again itself, which pytest's private (0700) tmp_path would refuse."""
    path = Path(tempfile.mkdtemp(prefix="audit-guard-rotation-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("template", [RENAME, COPYTRUNCATE], ids=["rename_reopen",
                                                                   "copytruncate"])
def test_rotation_under_load_loses_and_duplicates_nothing(tmp_path: Path, log_dir: Path,
                                                          template: str) -> None:
    tool_path("otelcol-audit-guard")  # no skip: a missing collector is a failure
    with FakeProcessor(free_port()) as fake, nginx_with_upstream(log_dir) as stack:
        conf = write_logrotate_conf(template, stack, tmp_path / "logrotate.conf")
        collector, _ = start_collector(
            tmp_path / "collector", access_log=stack.paths.access_log,
            nginx_error_log=stack.paths.error_log, processor_endpoint=f"127.0.0.1:{fake.port}",
            traces_endpoint=f"127.0.0.1:{free_port()}", vts_target=f"127.0.0.1:{free_port()}")
        try:
            with Traffic(stack.port) as traffic:
                for _ in range(ROTATIONS):
                    time.sleep(SECONDS_BETWEEN)
                    logrotate(conf, tmp_path / "logrotate.state")
                time.sleep(SECONDS_BETWEEN)
            written = request_ids_written(stack.paths.access_log)
            assert traffic.sent > 100 * ROTATIONS, "no real load"
            assert len(set(written)) == len(written)
            # Every answer is logged — except that copytruncate itself loses what nginx writes
            # between logrotate's copy and its truncate (logrotate(8)): not in any file. That
            # window is the copy of a few hundred KB: measured ~30 ms a rotation (~1 % of the
            # lines at ~1,000 requests/s), longer on a loaded disk; bounded at 0.25 s of the
            # traffic a rotation (a 1 % bound failed once under a parallel test run: 97 of 8,410).
            gap = traffic.sent - len(written)
            if template is COPYTRUNCATE:
                window_share = ROTATIONS * 0.25 / ((ROTATIONS + 1) * SECONDS_BETWEEN)
                assert 0 <= gap <= traffic.sent * window_share, gap
            else:
                assert gap == 0, f"{gap} answered requests are in no log file"
            rotated = sorted(p.name for p in stack.paths.workdir.glob("access.log.*"))
            assert rotated == ["access.log.1", "access.log.2.gz", "access.log.3.gz"]

            settle(lambda: set(written) <= set(delivered_ids(fake, stack.paths.access_log)),
                   lambda: len(fake.bodies()))
            time.sleep(2)  # room for a late duplicate to show up
            got = delivered_ids(fake, stack.paths.access_log)
            lost = set(written) - set(got)
            dupes = [rid for rid, n in Counter(got).items() if n > 1]
            assert not lost, f"{len(lost)} of {len(written)} lines lost"
            assert not dupes, f"{len(dupes)} lines delivered twice, e.g. {dupes[:3]}"
            print(f"\n{len(written)} lines over {ROTATIONS} rotations: 0 lost, 0 duplicated"
                  f" (copytruncate's own gap: {gap})")
        finally:
            collector.stop()


def test_doctor_judges_the_tested_configs(tmp_path: Path) -> None:
    """The configs proven above pass the doctor (copytruncate with its warning); the same
    rename config without delaycompress, which loses the unread `.1`, fails."""
    access = AuditLog("/srv/nginx/access.log", "nginx_access")

    def levels(template: str) -> dict[str, Level]:
        path = tmp_path / "conf"
        path.write_text(template.format(logs=access.path, reopen="nginx -s reopen"))
        return {f.check: f.level for f in check_logrotate([path], [access])}

    assert levels(RENAME) == {"logrotate.rotation": Level.OK}
    assert levels(COPYTRUNCATE) == {"logrotate.copytruncate": Level.WARN}
    assert levels(RENAME.replace("    delaycompress\n", "")) == {
        "logrotate.compress": Level.FAIL}


def test_copytruncate_seen_mid_copy_is_read_once(tmp_path: Path) -> None:
    """logrotate's copy of a big file takes a while: polls see `<name>.1` half-written, with
    the live file's fingerprint but shorter than its saved offset, then the truncated live file.
    Here the copy is stopped halfway for five polls on purpose: every line in the files arrives,
    none twice."""
    tool_path("otelcol-audit-guard")  # no skip: a missing collector is a failure
    log = tmp_path / "access.log"
    backlog = 20_000
    log.write_text("".join(f'{{"n":-{i + 1},"pad":"{"b" * 150}"}}\n' for i in range(backlog)))
    with FakeProcessor(free_port()) as fake:
        proc, _ = start_collector(
            tmp_path / "collector", access_log=log, processor_endpoint=f"127.0.0.1:{fake.port}",
            traces_endpoint=f"127.0.0.1:{free_port()}", vts_target=f"127.0.0.1:{free_port()}")
        writer = LineWriter(log, 1000)
        try:
            settle(lambda: len(fake.bodies()) >= backlog, lambda: len(fake.bodies()))
            writer.start()
            time.sleep(1)
            snapshot = log.read_bytes()  # all read by now: the saved offset is about its size
            with log.with_name(log.name + ".1").open("wb") as copy:
                copy.write(snapshot[:len(snapshot) // 2])
                copy.flush()
                time.sleep(1)  # five polls see the half-written copy
                copy.write(snapshot[len(snapshot) // 2:])
                with log.open("rb") as src:  # what was appended meanwhile, then truncate
                    src.seek(len(snapshot))
                    copy.write(src.read())
                os.truncate(log, 0)
            time.sleep(1.5)
            writer.stop()
            in_files = {number(line) for f in (log, log.with_name(log.name + ".1"))
                        for line in f.read_text().splitlines()}

            def delivered() -> list[int]:
                return [number(b) for b in fake.bodies()]

            settle(lambda: in_files <= set(delivered()), lambda: len(fake.bodies()))
            got = delivered()
            lost = in_files - set(got)
            assert not lost, f"{len(lost)} of {len(in_files)} lines in the files lost"
            assert len(got) == len(set(got)), f"{len(got) - len(set(got))} lines sent twice"
        finally:
            writer.stop()
            proc.stop()


def number(line: str) -> int:
    return int(line[5:line.index(",")])  # '{"n":<int>,…'


class DockerJsonFileWriter(threading.Thread):
    """Writes json-file lines like dockerd, and rotates like it (`max-file: 3`): when the file
    holds `per_file` lines, `.1` → `.2`, live → `.1`, a new live file — by the writer itself, so
    nothing is written to a renamed file; a reader that is behind finds the rest in `.1`."""

    def __init__(self, live: Path, rate: int, per_file: int) -> None:
        super().__init__(daemon=True)
        self.live, self.rate, self.per_file = live, rate, per_file
        self.written, self.rotations = 0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        start, in_file = time.monotonic(), 0
        while not self._halt.is_set():
            due = int((time.monotonic() - start) * self.rate)
            with self.live.open("a") as f:
                while self.written < due and in_file < self.per_file:
                    f.write(json.dumps({"log": f'{{"n":{self.written}}}\n', "stream": "stdout",
                                        "time": "2026-12-02T01:00:00.000000001Z"}) + "\n")
                    self.written += 1
                    in_file += 1
            if in_file >= self.per_file:
                one = self.live.with_name(self.live.name + ".1")
                if one.exists():
                    one.rename(self.live.with_name(self.live.name + ".2"))
                self.live.rename(one)
                self.rotations, in_file = self.rotations + 1, 0
            time.sleep(0.005)

    def stop(self) -> int:
        self._halt.set()
        self.join(10)
        return self.written


def test_docker_json_file_rotation_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """dockerd rotates by rename with no reopen gap, but a collector that is down (restart,
    upgrade) while the file rotates finds the lines it had not read in `<id>-json.log.1`."""
    tool_path("otelcol-audit-guard")  # no skip: a missing collector is a failure
    live = tmp_path / "containers" / "c0ffee" / "c0ffee-json.log"
    live.parent.mkdir(parents=True)
    writer = DockerJsonFileWriter(live, rate=3000, per_file=4000)  # a rotation every ~1.3 s
    with FakeProcessor(free_port()) as fake:
        def start() -> ManagedProcess:
            return start_collector(
                tmp_path / "collector", access_log=tmp_path / "none.log",
                container_logs=str(tmp_path / "containers" / "*" / "*-json.log"),
                processor_endpoint=f"127.0.0.1:{fake.port}",
                traces_endpoint=f"127.0.0.1:{free_port()}",
                vts_target=f"127.0.0.1:{free_port()}")[0]

        proc = start()
        try:
            writer.start()
            time.sleep(2)
            proc.stop()  # down for less than one rotation period: the file rotates meanwhile
            rotations = writer.rotations
            time.sleep(1)
            assert writer.rotations > rotations, "no rotation while the collector was down"
            proc = start()
            time.sleep(3)
            written = writer.stop()

            def delivered() -> list[int]:
                return [json.loads(body)["n"] for path, body in fake.bodies_by_file()
                        if path.startswith(str(live))]  # the container parser unwrapped `log`

            settle(lambda: set(range(written)) <= set(delivered()), lambda: len(fake.bodies()))
            got = delivered()
            lost = set(range(written)) - set(got)
            assert not lost, f"{len(lost)} of {written} container lines lost"
            assert len(got) == len(set(got)), f"{len(got) - len(set(got))} lines sent twice"
        finally:
            writer.stop()
            proc.stop()
