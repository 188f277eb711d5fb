"""journald and syslog inputs (issue #15) through the real programs.

journald: a journal written by the real `systemd-journal-remote` from journal export format (the
entries Docker's journald driver writes: a whole line, a line split in 16 KiB pieces the Docker
≥ 20 way and the older way, a line whose last piece never came, a line the app held back, a
line journald itself stored late, an invalid record, another container's line) is read by the
real collector's journald receiver with the shipped overlay → `audit-guard serve` → a recording
backend. The flags must be the ones the same records get from a Docker json-file log, and the
same again from `audit-guard replay` of `journalctl -o json --all` and `-o export` output.

syslog: the real `logger` (util-linux) sends RFC 5424 octet-counted over TCP and RFC 3164 over
UDP (and TCP) to the collector's syslog receivers (shipped overlay) → serve: a whole record, an
invalid one, one longer than the receiver's octet limit (arrives whole), and one longer than
logger's UDP message size (cut: flagged, never dropped).
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from audit_guard.config import load_settings
from audit_guard.replay import replay
from demo.backends import start_collector
from demo.procs import ManagedProcess, free_port, port_open, wait_until
from tests.support.otlp_doubles import RecordingDownstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
JOURNALD_OVERLAY = ROOT / "collector-config" / "audit-guard-journald.yaml"
SYSLOG_OVERLAY = ROOT / "collector-config" / "audit-guard-syslog.yaml"
JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
BOOT_ID = "0123456789abcdef0123456789abcdef"
BOOTED_US = 1_700_000_000_000_000  # when that boot began (2023), in µs
PIECE = 16 * 1024  # Docker's buffer: a longer line is sent in pieces of this size
US = 1_000_000


def rid(i: int) -> str:
    return f"{0xB0000 + i:032x}"


def iso(at: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f"{stamp}.{int(at * 1000) % 1000:03d}Z"


def app_line(i: int, at: float, *, user: str | None = None, padding: int = 0) -> str:
    identity = {"tenant_id": "t1", "user_type": "end_user"}
    if user != "":
        identity["user_id"] = user or f"user-{i % 5}"
    attributes: dict[str, object] = {"app_id": "app-1"}
    if padding:
        attributes["note"] = "x" * padding
    return orjson.dumps({
        "ts": iso(at), "severity": "INFO", "service": "api",
        "caller": "ext_request_logging.py:80", "trace_id": rid(i),
        "message": f"POST /v1/chat-messages 200 900.0 {rid(i)}",
        "identity": identity, "attributes": attributes,
    }).decode()


# -------------------------------------------------------------------------------- journald


def export_entry(fields: dict[str, str]) -> bytes:
    """One entry in journal export format (a value with a newline: binary-safe form)."""
    out = b""
    for key, value in fields.items():
        data = value.encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return out + b"\n"


class Journal:
    """Entries as Docker's journald driver writes them, for the app container."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []
        self.docker: list[str] = []  # the same lines as a Docker json-file log

    def add(self, message: str, stored: float, source: float | None = None,
            container: str = "app", **extra: str) -> None:
        # One boot, so the monotonic clock runs with the wall clock: journalctl orders the
        # entries of one boot in different files by it (and seeks a saved cursor by it).
        fields = {"__REALTIME_TIMESTAMP": str(int(stored * US)),
                  "__MONOTONIC_TIMESTAMP": str(int(stored * US) - BOOTED_US),
                  "_BOOT_ID": BOOT_ID, "MESSAGE": message, "PRIORITY": "6",
                  "CONTAINER_NAME": container, "CONTAINER_TAG": container,
                  "SYSLOG_IDENTIFIER": container, "CONTAINER_ID": "0123456789ab",
                  "CONTAINER_ID_FULL": "0123456789ab" * 5 + "0123", "IMAGE_NAME": "api:1"}
        if source is not None:
            fields["_SOURCE_REALTIME_TIMESTAMP"] = str(int(source * US))
        fields.update(extra)
        self.entries.append(fields)

    def line(self, text: str, read: float, stored: float | None = None, *,
             split: str = "", last: bool = True, piece_id: str = "") -> None:
        """A container line the runtime read at `read` (journald stored it at `stored`);
        split: "" (one entry), "id" (Docker >= 20 fields) or "old" (only the partial flag)."""
        pieces = [text[k:k + PIECE] for k in range(0, len(text), PIECE)] if split else [text]
        for n, piece in enumerate(pieces, 1):
            final = n == len(pieces) and last
            extra: dict[str, str] = {}
            if not final and split:
                extra["CONTAINER_PARTIAL_MESSAGE"] = "true"
            if split == "id":
                extra.update(CONTAINER_PARTIAL_ID=piece_id, CONTAINER_PARTIAL_ORDINAL=str(n),
                             CONTAINER_PARTIAL_LAST="true" if final else "false")
            self.add(piece, stored if stored is not None else read + 0.001 * n, read, **extra)
            if not last and n == len(pieces) - 1:
                break  # the container stopped before it sent the last piece
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(read))
        whole = text if last else "".join(pieces[:-1])
        self.docker += [orjson.dumps({
            "log": whole[k:k + PIECE] + ("\n" if last and k + PIECE >= len(whole) else ""),
            "stream": "stdout",
            "time": f"{stamp}.{int(read * 1e9) % 1_000_000_000:09d}Z"}).decode()
            for k in range(0, len(whole), PIECE)]

    def write(self, directory: Path, name: str = "remote.journal") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        export = b"".join(export_entry(e) for e in self.entries)
        subprocess.run([str(JOURNAL_REMOTE), "-o", str(directory / name), "-"],
                       input=export, check=True, capture_output=True, timeout=30)


WHOLE, SPLIT_ID, SPLIT_OLD, HELD, STORED_LATE, INVALID, UNFINISHED = range(7)
EXPECTED_JOURNAL = {
    WHOLE: (), SPLIT_ID: (), SPLIT_OLD: (), STORED_LATE: (),
    HELD: ("delayed",),
    INVALID: ("missing_field:user_id", "rule:unknown_user"),
    # The cut falls inside `attributes`: what the app logged after it is missing too.
    UNFINISHED: ("missing_field:app_id", "missing_field:user_id", "rule:unknown_user",
                 "truncated:json_cut", "truncated:partial_line"),
}


def lay_journal(root: Path) -> tuple[Path, Path]:
    """The journal directory and the same lines as a Docker json-file log."""
    t0 = time.time() - 600  # a backlog: written ten minutes before the chain reads it
    j = Journal()
    j.add(app_line(99, t0), t0 + 0.1, t0 + 0.1, container="other")  # not the app's
    j.line(app_line(WHOLE, t0), t0 + 0.05)
    j.line(app_line(SPLIT_ID, t0 + 1, padding=40_000), t0 + 1.05, split="id", piece_id="p-1")
    j.line(app_line(SPLIT_OLD, t0 + 2, padding=20_000), t0 + 2.05, split="old")
    j.line(app_line(HELD, t0 + 3), t0 + 12)  # the app held its stdout back 9 s
    j.line(app_line(STORED_LATE, t0 + 4), t0 + 4.05, stored=t0 + 30)  # journald's own backlog
    j.line(app_line(INVALID, t0 + 5, user=""), t0 + 5.05)
    j.line(app_line(UNFINISHED, t0 + 6, padding=20_000), t0 + 6.05, split="id",
           piece_id="p-2", last=False)
    directory = root / "journal"
    j.write(directory)
    docker_log = root / "containers" / "c1" / "c1-json.log"
    docker_log.parent.mkdir(parents=True)
    docker_log.write_text("\n".join(j.docker) + "\n")
    return directory, docker_log


@contextmanager
def serving(tmp_path: Path) -> Iterator[tuple[int, RecordingDownstream]]:
    downstream = RecordingDownstream()
    downstream.server.start()
    otlp = free_port()
    serve = ManagedProcess(
        "serve", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
        env={"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp}",
             "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
             "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}"}).start()
    try:
        serve.wait_ready(lambda: port_open(otlp), 60)
        yield otlp, downstream
    finally:
        serve.stop()
        downstream.server.stop(None)


def served_flags(downstream: RecordingDownstream) -> dict[str, tuple[str, ...]]:
    out = {}
    for span in downstream.spans():
        attributes = {a.key: a.value for a in span.attributes}
        if "audit.flags" in attributes:
            flags = tuple(v.string_value for v in attributes["audit.flags"].array_value.values)
        else:
            flags = ()
        out[span.trace_id.hex()] = tuple(sorted(flags))
    return out


def replayed_flags(path: Path) -> dict[str, tuple[str, ...]]:
    out, err = io.BytesIO(), io.StringIO()
    replay([path], settings=load_settings(), out=out, err=err)
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    return {r["trace_id"]: tuple(sorted(r["flags"])) for r in rows if r["file"] is not None}


def by_record(flags: dict[str, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    return {int(trace, 16) - 0xB0000: f for trace, f in flags.items()
            if 0 <= int(trace, 16) - 0xB0000 < 100}


def test_journal_entries_get_the_flags_of_json_file(tmp_path: Path) -> None:
    directory, docker_log = lay_journal(tmp_path)
    # The json-file log of the same lines: the reference the journal path must agree with.
    assert by_record(replayed_flags(docker_log)) == EXPECTED_JOURNAL

    with serving(tmp_path) as (otlp, downstream):
        collector, _ = start_collector(
            tmp_path / "collector", access_log=tmp_path / "none.log",
            processor_endpoint=f"127.0.0.1:{otlp}", traces_endpoint=f"127.0.0.1:{free_port()}",
            vts_target=f"127.0.0.1:{free_port()}", overlays=[JOURNALD_OVERLAY],
            extra_env={"JOURNALD_DIRECTORY": str(directory), "JOURNALD_CONTAINER_NAME": "app"})
        try:
            # The unfinished line is sent after the recombine step's 5 s flush.
            wait_until(lambda: len(downstream.spans()) >= len(EXPECTED_JOURNAL), 60,
                       f"{len(EXPECTED_JOURNAL)} spans at the backend")
            time.sleep(2)  # anything more (the other container's line, a re-send) by now
        finally:
            collector.stop()
    served = served_flags(downstream)
    assert by_record(served) == EXPECTED_JOURNAL
    assert len(served) == len(EXPECTED_JOURNAL), "the other container's line was read"

    for output in ("json", "export"):  # journalctl's two machine-readable outputs
        exported = tmp_path / f"journal.{output}"
        with exported.open("wb") as fh:
            subprocess.run(["journalctl", "--directory", str(directory), "-o", output, "--all",
                            "CONTAINER_NAME=app"], stdout=fh, check=True, timeout=30)
        assert by_record(replayed_flags(exported)) == EXPECTED_JOURNAL, output


def test_a_restart_goes_on_from_the_saved_cursor(tmp_path: Path) -> None:
    t0 = time.time() - 600
    before, after = Journal(), Journal()
    for i in range(30, 40):
        before.line(app_line(i, t0 + i), t0 + i + 0.05)
    for i in range(40, 45):
        after.line(app_line(i, t0 + i), t0 + i + 0.05)
    directory = tmp_path / "journal"
    before.write(directory)
    with serving(tmp_path) as (otlp, downstream):

        def run(expected: int) -> None:
            collector, _ = start_collector(
                tmp_path / "collector", access_log=tmp_path / "none.log",
                processor_endpoint=f"127.0.0.1:{otlp}",
                traces_endpoint=f"127.0.0.1:{free_port()}",
                vts_target=f"127.0.0.1:{free_port()}", storage_dir=tmp_path / "storage",
                overlays=[JOURNALD_OVERLAY], extra_env={"JOURNALD_DIRECTORY": str(directory)})
            try:
                wait_until(lambda: len(downstream.spans()) >= expected, 60,
                           f"{expected} spans at the backend")
                time.sleep(2)  # a re-read of the journal's start would be here by now
            finally:
                collector.stop()

        run(10)
        after.write(directory, "later.journal")  # written while the collector was down
        run(15)
    traces = [span.trace_id.hex() for span in downstream.spans()]
    assert sorted(set(traces)) == sorted(rid(i) for i in range(30, 45))
    assert len(traces) == 15, "entries read before the restart were read again"


# ---------------------------------------------------------------------------------- syslog

S_TCP5424, S_UDP3164, S_TCP3164, S_INVALID, S_OVER_OCTETS, S_OVER_UDP, S_HELD = range(20, 27)
EXPECTED_SYSLOG = {
    S_TCP5424: (), S_UDP3164: (), S_TCP3164: (), S_OVER_OCTETS: (),
    S_INVALID: EXPECTED_JOURNAL[INVALID],
    # RFC 5424's TIMESTAMP is logger's send time: 10 s after the app's own.
    S_HELD: EXPECTED_JOURNAL[HELD],
    # logger cuts a UDP message at its --size (1 KiB by default): kept, said to be cut.
    S_OVER_UDP: ("missing_field:app_id", "missing_field:user_id", "rule:unknown_user",
                 "truncated:json_cut", "truncated:size_limit"),
}


def logger(port: int, *args: str) -> float:
    """Send the last argument with the real logger; returns when it was sent."""
    sent = time.time()
    subprocess.run(["logger", "--server", "127.0.0.1", "--port", str(port), "-t",
                    "app/0123456789ab", *args], check=True, timeout=30)
    return sent


def as_json_file(path: Path, sent: dict[int, tuple[str, float]]) -> Path:
    """The same lines as Docker's json-file driver would have written them when sent."""
    path.write_text("".join(orjson.dumps({
        "log": line + "\n", "stream": "stdout",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
        + f".{int(at * 1e9) % 1_000_000_000:09d}Z"}).decode() + "\n"
        for line, at in sent.values()))
    return path


def test_logger_messages_over_tcp_and_udp(tmp_path: Path) -> None:
    ports = {"SYSLOG_RFC5424_TCP": free_port(), "SYSLOG_RFC3164_TCP": free_port(),
             "SYSLOG_UDP": free_port()}
    with serving(tmp_path) as (otlp, downstream):
        collector, _ = start_collector(
            tmp_path / "collector", access_log=tmp_path / "none.log",
            processor_endpoint=f"127.0.0.1:{otlp}", traces_endpoint=f"127.0.0.1:{free_port()}",
            vts_target=f"127.0.0.1:{free_port()}", overlays=[SYSLOG_OVERLAY],
            extra_env={k: f"127.0.0.1:{p}" for k, p in ports.items()})
        try:
            # The app's time, once the chain is up: logger stamps RFC 5424 with its send time,
            # and a record sent > lag_threshold_s after its own time is (rightly) delayed.
            now = time.time()
            tcp5424 = ("--tcp", "--rfc5424", "--octet-count", "--size", "200000")
            whole = {  # record → (its line, port, logger's options)
                S_TCP5424: (app_line(S_TCP5424, now), "SYSLOG_RFC5424_TCP", tcp5424),
                S_UDP3164: (app_line(S_UDP3164, now), "SYSLOG_UDP", ("--udp", "--rfc3164")),
                S_TCP3164: (app_line(S_TCP3164, now), "SYSLOG_RFC3164_TCP",
                            ("--tcp", "--rfc3164")),
                S_INVALID: (app_line(S_INVALID, now, user=""), "SYSLOG_RFC5424_TCP", tcp5424),
                # over the receiver's default max_octets (8192)
                S_OVER_OCTETS: (app_line(S_OVER_OCTETS, now, padding=20_000),
                                "SYSLOG_RFC5424_TCP", tcp5424),
                S_HELD: (app_line(S_HELD, now - 10), "SYSLOG_RFC5424_TCP", tcp5424),
            }
            sent = {i: (line, logger(ports[port], *options, line))
                    for i, (line, port, options) in whole.items()}
            logger(ports["SYSLOG_UDP"], "--udp", "--rfc3164",
                   app_line(S_OVER_UDP, now, padding=3000))
            wait_until(lambda: len(downstream.spans()) >= len(EXPECTED_SYSLOG), 60,
                       f"{len(EXPECTED_SYSLOG)} spans at the backend")
            time.sleep(1)
        finally:
            collector.stop()
    served = served_flags(downstream)
    assert by_record(served) == EXPECTED_SYSLOG
    assert len(served) == len(EXPECTED_SYSLOG)
    # The whole lines get the flags they get from a json-file log (RFC 3164 aside: its time
    # carries no lag, and none of its lines here was held back).
    reference = by_record(replayed_flags(as_json_file(tmp_path / "c1-json.log", sent)))
    assert reference == {i: EXPECTED_SYSLOG[i] for i in whole}


def test_the_overlays_validate_over_the_base_config_together() -> None:
    base = ROOT / "collector-config" / "audit-guard.yaml"
    result = subprocess.run(
        [str(ROOT / ".cache" / "bin" / "otelcol-audit-guard"), "validate", "--config", str(base),
         "--config", str(JOURNALD_OVERLAY), "--config", str(SYSLOG_OVERLAY)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
