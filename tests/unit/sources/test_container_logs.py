"""Container log decoding: Docker json-file and CRI, in the processor and in the real collector.

- `recombine_docker` / `recombine_cri` (audit_guard/sources/container.py): 16 KiB splits joined
  per stream, interleaved streams, truncated tails kept as `partial`, escapes decoded,
  nanosecond times exact, malformed lines kept;
- the shipped `file_log/containers` receiver (collector-config/audit-guard.yaml), run in the real
  collector on files written the way Docker and containerd write them: one record per logical
  line, body = the text, timestamp = the runtime's `time`, `log.iostream` set, and an unfinished
  Docker piece flushed after `force_flush_period` marked `audit.partial`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit_guard.sources.container import (
    CRI,
    DOCKER,
    ContainerLine,
    detect_format,
    recombine_cri,
    recombine_docker,
)
from demo.backends import collector_config_path
from demo.procs import ManagedProcess, tool_path, wait_until

PIECE = 16 * 1024  # Docker's copier buffer: a longer line is written in pieces of this many bytes

T1 = "2025-11-26T14:00:00.123456789Z"
T1_NS = 1764165600_123456789
T2 = "2025-11-26T14:00:01.000000001Z"
T2_NS = 1764165601_000000001
T3 = "2025-11-26T14:00:02.5Z"  # Go's RFC3339Nano drops trailing zeros
T3_NS = 1764165602_500000000
T4 = "2025-11-26T14:00:03Z"  # ... and a zero fraction altogether
T4_NS = 1764165603_000000000
T5 = "2025-11-26T14:00:04.25Z"
T5_NS = 1764165604_250000000
T6 = "2025-11-26T14:00:05.5Z"
T6_NS = 1764165605_500000000


def go_json(value: Any) -> str:
    """JSON as Docker's Go encoder writes it: HTML-sensitive characters escaped, UTF-8 kept."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Outside strings JSON has no < > &, so replacing everywhere only touches string contents.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def docker_records(message: str, stream: str, ts: str, *, complete: bool = True) -> list[str]:
    """The json-file lines Docker writes for one line the app wrote (without its "\\n").

    Pieces of 16 KiB of the raw bytes, all with the same `time`; only the last one gets "\\n",
    and none does when the stream ended before the line did (`complete=False`).
    """
    raw = message.encode()
    assert raw.isascii(), "split at byte boundaries: keep test messages ASCII"
    pieces = [raw[i : i + PIECE].decode() for i in range(0, len(raw), PIECE)] or [""]
    if complete:
        pieces[-1] += "\n"
    return [go_json({"log": p, "stream": stream, "time": ts}) for p in pieces]


def numbered(lines: list[str]) -> list[tuple[int, bytes]]:
    return [(i, line.encode()) for i, line in enumerate(lines, 1)]


def long_message(size: int) -> str:
    """An app audit record of exactly `size` bytes with escapes (<, >, &, quotes) in it."""
    head = '{"user_id":"u<1>&co","path":"/v1/chat-messages","note":"a \\"quoted\\" <b>","pad":"'
    tail = '"}'
    pad = size - len(head) - len(tail)
    body = "".join(chr(ord("a") + i % 26) for i in range(pad))
    return head + body + tail


# ------------------------------------------------------------------------------------ docker


def test_a_40k_line_in_three_pieces_with_a_stderr_line_between() -> None:
    message = long_message(40 * 1024)
    pieces = docker_records(message, "stdout", T1)
    assert len(pieces) == 3  # 16 KiB + 16 KiB + 8 KiB, as Docker splits it
    assert [len(json.loads(p)["log"]) for p in pieces] == [PIECE, PIECE, 8 * 1024 + 1]
    stderr = docker_records("warn: <slow> & retrying", "stderr", T2)
    physical = [pieces[0], *stderr, pieces[1], pieces[2], *docker_records("done", "stdout", T3)]

    out = recombine_docker(numbered(physical))

    assert out == [
        ContainerLine(1, message, "stdout", T1_NS, False, None),
        ContainerLine(2, "warn: <slow> & retrying", "stderr", T2_NS, False, None),
        ContainerLine(5, "done", "stdout", T3_NS, False, None),
    ]


def test_a_trailing_unfinished_piece_is_partial() -> None:
    physical = [
        *docker_records("first", "stdout", T1),
        *docker_records(long_message(20_000), "stdout", T2, complete=False),
    ]
    out = recombine_docker(numbered(physical))
    assert [(o.line, o.partial) for o in out] == [(1, False), (2, True)]
    assert out[1].content == long_message(20_000)
    assert out[1].observed_time_unix_nano == T2_NS


def test_a_piece_followed_by_a_new_time_is_partial_not_glued() -> None:
    # The writer died mid-line (no "\n" ever written); after a restart the same stream goes on
    # with a new `time`. Docker gives every piece of one line the same time, so that is a new line.
    physical = [
        *docker_records("cut short", "stdout", T1, complete=False),
        *docker_records("after restart", "stdout", T2),
        *docker_records("stderr unaffected", "stderr", T3),
    ]
    out = recombine_docker(numbered(physical))
    assert [(o.content, o.partial, o.observed_time_unix_nano) for o in out] == [
        ("cut short", True, T1_NS),
        ("after restart", False, T2_NS),
        ("stderr unaffected", False, T3_NS),
    ]


def test_pending_pieces_of_both_streams() -> None:
    out_pieces = docker_records("o" * (PIECE + 5), "stdout", T1)
    err_pieces = docker_records("e" * (PIECE + 7), "stderr", T2)
    physical = [out_pieces[0], err_pieces[0], out_pieces[1], err_pieces[1]]
    out = recombine_docker(numbered(physical))
    assert [(o.line, o.stream, o.content) for o in out] == [
        (1, "stdout", "o" * (PIECE + 5)),
        (2, "stderr", "e" * (PIECE + 7)),
    ]
    assert not any(o.partial for o in out)


def test_escapes_and_unicode_decode() -> None:
    text = 'a<b>&c "q" \\ tab\t é 中 \u2028'
    line = go_json({"log": text + "\n", "stream": "stdout", "time": T1})
    assert "\\u003c" in line and "\\u0026" in line
    (out,) = recombine_docker([(1, line.encode())])
    assert out.content == text
    # Invalid UTF-8 was already replaced by U+FFFD by Docker; it stays that.
    (out,) = recombine_docker([(1, b'{"log":"x\\ufffdy\\n","stream":"stderr","time":"' + T1.encode()
                                   + b'"}')])
    assert out.content == "x\ufffdy"


def test_nanosecond_times_are_exact() -> None:
    for ts, ns in ((T1, T1_NS), (T2, T2_NS), (T3, T3_NS), (T4, T4_NS)):
        (out,) = recombine_docker(numbered(docker_records("x", "stdout", ts)))
        assert out.observed_time_unix_nano == ns, ts
    # The grammar itself (every form, naive times, ranges) is tested in
    # tests/unit/grammar/test_grammar.py.
    # A docker record with an unreadable time is still a line, without an observed time.
    (out,) = recombine_docker([(1, '{"log":"x\\n","stream":"stdout","time":"yesterday"}')])
    assert out == ContainerLine(1, "x", "stdout", None)


def test_attrs_are_kept_and_malformed_lines_kept_in_place() -> None:
    physical = [
        go_json({"log": "a\n", "stream": "stdout", "attrs": {"tag": "app", "n": 1}, "time": T1}),
        "not json at all",
        '{"log":"cut","stream":"stdout","ti',  # a json-file line cut mid-write
        '{"log": 5, "stream": "stdout", "time": "' + T1 + '"}',  # JSON, but not a docker record
        "",  # empty physical lines are not lines
        go_json({"log": "b\n", "stream": "stderr", "time": T2}),
    ]
    out = recombine_docker(numbered(physical))
    assert out[0] == ContainerLine(1, "a", "stdout", T1_NS, False, {"tag": "app", "n": "1"})
    assert [(o.line, o.content, o.stream, o.malformed) for o in out[1:]] == [
        (2, "not json at all", "", True),
        (3, '{"log":"cut","stream":"stdout","ti', "", True),
        (4, '{"log": 5, "stream": "stdout", "time": "' + T1 + '"}', "", True),
        (6, "b", "stderr", False),
    ]
    assert all(o.observed_time_unix_nano is None for o in out[1:4])


def test_a_malformed_line_between_pieces_does_not_break_the_run() -> None:
    pieces = docker_records("p" * (PIECE + 1), "stdout", T1)
    out = recombine_docker(numbered([pieces[0], "garbage", pieces[1]]))
    assert [(o.line, o.malformed, len(o.content)) for o in out] == [
        (1, False, PIECE + 1),
        (2, True, 7),
    ]


def test_str_input_and_an_empty_log_line() -> None:
    out = recombine_docker([(7, go_json({"log": "\n", "stream": "stdout", "time": T1}))])
    assert out == [ContainerLine(7, "", "stdout", T1_NS)]


# --------------------------------------------------------------------------------------- CRI


def test_cri_partial_pieces_are_joined_per_stream() -> None:
    physical = [
        f"{T1} stdout P first-",
        f"{T2} stderr F an error line",
        f"{T2} stdout P second-",
        f"{T3} stdout F third",
        f"{T4} stdout F",  # empty line: containerd writes no content after the tag
        f"{T4} stderr P never finished",
    ]
    out = recombine_cri(numbered(physical))
    assert out == [
        ContainerLine(1, "first-second-third", "stdout", T1_NS),  # the first piece's time
        ContainerLine(2, "an error line", "stderr", T2_NS),
        ContainerLine(5, "", "stdout", T4_NS),
        ContainerLine(6, "never finished", "stderr", T4_NS, partial=True),
    ]


def test_cri_content_is_kept_verbatim_and_malformed_lines_kept() -> None:
    physical = [
        f"{T1} stdout F  two spaces, a tab\t and a trailing space ",
        "2025-11-26T16:00:00.5+02:00 stdout F cri-o writes an offset",
        f"{T1} stdin F not a stream",
        f"{T1} stdout X not a tag",
        "yesterday stdout F not a time",
        f"{T1} stdout F:x extra tags after the first",
    ]
    out = recombine_cri([(i, line) for i, line in enumerate(physical, 1)])
    assert out[0].content == " two spaces, a tab\t and a trailing space "
    assert out[1] == ContainerLine(2, "cri-o writes an offset", "stdout", 1764165600_500000000)
    assert [(o.line, o.malformed, o.stream) for o in out[2:5]] == [
        (3, True, ""), (4, True, ""), (5, True, "")
    ]
    assert out[2].content == physical[2]
    assert out[5] == ContainerLine(6, "extra tags after the first", "stdout", T1_NS)


def test_detect_format() -> None:
    docker = [line.encode() for line in docker_records("x", "stdout", T1)]
    cri = [f"{T1} stdout F x".encode()]
    app = [b'{"user_id":"u1","path":"/v1/x","time":"2025-11-26T14:00:00Z"}']
    assert detect_format(docker + [b"", b"junk"]) == DOCKER
    assert detect_format(cri + [b"junk"]) == CRI
    assert detect_format(app) is None  # plain JSON lines are not docker's envelope
    assert detect_format([b"", b"hello"]) is None
    assert detect_format([]) is None


# ---------------------------------------------------------------------------- real collector

def shipped_container_receiver() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(collector_config_path().read_text())
    receiver: dict[str, Any] = config["receivers"]["file_log/containers"]
    assert "file_log/containers" in config["service"]["pipelines"]["logs/audit"]["receivers"]
    return receiver


def force_flush_s() -> float:
    """The shipped docker recombine operator's force_flush_period, in seconds."""
    (op,) = [o for o in shipped_container_receiver()["operators"] if o["type"] == "recombine"]
    period: str = op["force_flush_period"]
    assert period.endswith("s") and period[:-1].isdigit(), period
    return float(period[:-1])


def collector_config(tmp_path: Path, includes: dict[str, Path], out: Path) -> Path:
    """The shipped container receiver (one copy per file, only `include` changed) → a file."""
    base = shipped_container_receiver()
    receivers = {}
    for name, path in includes.items():
        receiver = copy.deepcopy(base)
        receiver["include"] = [str(path)]
        receivers[f"file_log/{name}"] = receiver
    config = {
        "extensions": {"file_storage": {"directory": str(tmp_path / "storage"),
                                        "create_directory": True}},
        "receivers": receivers,
        "exporters": {"file": {"path": str(out), "format": "json", "flush_interval": "100ms"}},
        "service": {
            "extensions": ["file_storage"],
            "pipelines": {"logs": {"receivers": list(receivers), "exporters": ["file"]}},
            # No internal metrics endpoint: nothing to collide with a parallel run on :8888.
            "telemetry": {"metrics": {"level": "none"}},
        },
    }
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def exported_records(out: Path) -> list[dict[str, Any]]:
    """Log records from the file exporter's OTLP JSON lines, with plain `attrs` and `receiver`."""
    if not out.exists():
        return []
    records = []
    for line in out.read_text().splitlines():
        if not line.strip():
            continue
        for rl in json.loads(line).get("resourceLogs", []):
            resource = {a["key"]: _value(a["value"])
                        for a in rl.get("resource", {}).get("attributes", [])}
            for sl in rl.get("scopeLogs", []):
                for rec in sl.get("logRecords", []):
                    rec["attrs"] = {a["key"]: _value(a["value"]) for a in rec.get("attributes", [])}
                    rec["resource"] = resource
                    records.append(rec)
    return records


def _value(value: dict[str, Any]) -> Any:
    if "kvlistValue" in value:
        return {kv["key"]: _value(kv["value"]) for kv in value["kvlistValue"].get("values", [])}
    if "intValue" in value:
        return int(value["intValue"])
    return next(iter(value.values()), None)


@pytest.mark.e2e
def test_the_shipped_receiver_recombines_docker_and_cri_in_the_real_collector(
    tmp_path: Path,
) -> None:
    otelcol = tool_path("otelcol-audit-guard")  # no skip: a missing collector is a failure
    big = long_message(40 * 1024)
    big_pieces = docker_records(big, "stdout", T1)
    docker_lines = [
        big_pieces[0],
        *docker_records("stderr <between> & pieces", "stderr", T2),
        big_pieces[1],
        big_pieces[2],
        *docker_records('{"user_id":"u2","path":"/v1/x"}', "stdout", T3),
        # The container stopped mid-line; after its restart the next line has another time.
        *docker_records("stopped mid-line", "stdout", T5, complete=False),
        *docker_records("the first line after the restart", "stdout", T6),
        "not a docker line",
        *docker_records("the app died mid-line " + "z" * 100, "stdout", T4, complete=False),
    ]
    docker_log = tmp_path / "containers" / "abc" / "abc-json.log"
    docker_log.parent.mkdir(parents=True)
    docker_log.write_text("".join(line + "\n" for line in docker_lines))
    cri_log = tmp_path / "pods" / "0.log"
    cri_log.parent.mkdir(parents=True)
    cri_log.write_text(
        f"{T1} stdout P cri-first-\n{T1} stdout P cri-second-\n{T2} stdout F cri-third\n"
        f"{T3} stderr F cri <error> & more\n"
    )
    out = tmp_path / "out.json"
    config = collector_config(tmp_path, {"containers": docker_log, "containers_cri": cri_log}, out)

    proc = ManagedProcess("collector", [otelcol, "--config", config], log_dir=tmp_path,
                          cwd=tmp_path)
    proc.start()
    started = time.monotonic()
    try:
        def complete_lines_arrived() -> bool:
            assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
            return len(exported_records(out)) >= 7

        wait_until(complete_lines_arrived, 30, "the complete lines in the file exporter")
        early = exported_records(out)
        # The unfinished Docker piece is held by the recombine operator ...
        assert not any(r["attrs"].get("audit.partial") for r in early)
        arrived_after = None

        def partial_arrived() -> bool:
            nonlocal arrived_after
            if any(r["attrs"].get("audit.partial") for r in exported_records(out)):
                arrived_after = time.monotonic() - started
                return True
            return False

        # ... until force_flush_period has passed since it was read; then it is emitted as is.
        flush_s = force_flush_s()
        wait_until(partial_arrived, flush_s * 4, "the unfinished piece to be flushed")
        assert arrived_after is not None and arrived_after >= flush_s - 1
        time.sleep(1.5)  # anything else (duplicates, stray pieces) would show up by now
        records = exported_records(out)
    finally:
        proc.stop()

    by_file: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_file.setdefault(rec["attrs"]["log.file.name"], []).append(rec)
    docker = by_file[docker_log.name]
    cri = by_file[cri_log.name]
    # A line that is not docker's JSON is passed on raw (the processor flags it as malformed).
    (malformed,) = [r for r in docker if "log.iostream" not in r["attrs"]]
    assert malformed["body"]["stringValue"] == "not a docker line"
    assert int(malformed.get("timeUnixNano", 0)) == 0
    docker.remove(malformed)

    def summary(recs: list[dict[str, Any]]) -> list[tuple[str, str, int, bool]]:
        return sorted(
            (r["body"]["stringValue"], r["attrs"]["log.iostream"], int(r["timeUnixNano"]),
             bool(r["attrs"].get("audit.partial")))
            for r in recs
        )

    # One record per logical line; the 40 KiB line arrives whole, with the exact text (escapes
    # decoded, no trailing "\n"); timestamp = Docker's `time`, nanoseconds kept.
    assert summary(docker) == sorted([
        (big, "stdout", T1_NS, False),
        ("stderr <between> & pieces", "stderr", T2_NS, False),
        ('{"user_id":"u2","path":"/v1/x"}', "stdout", T3_NS, False),
        ("stopped mid-line", "stdout", T5_NS, True),  # cut short, not glued to the next line
        ("the first line after the restart", "stdout", T6_NS, False),
        ("the app died mid-line " + "z" * 100, "stdout", T4_NS, True),
    ])
    for rec in docker:
        assert rec["resource"]["audit.source"] == "app"  # read once per batch by the processor
        assert rec["attrs"]["log.file.path"] == str(docker_log)
        # The grouping key of the docker recombine step is removed again; nothing else leaks.
        assert set(rec["attrs"]) <= {"log.file.path", "log.file.name", "log.file.record_offset",
                                     "log.iostream", "audit.partial"}, rec["attrs"]

    # CRI: P P F joined by the container parser itself (first piece's time); no Docker steps.
    assert summary(cri) == sorted([
        ("cri-first-cri-second-cri-third", "stdout", T1_NS, False),
        ("cri <error> & more", "stderr", T3_NS, False),
    ])
    for rec in cri:
        assert rec["resource"]["audit.source"] == "app"
        assert rec["attrs"]["logtag"] in ("P", "F")
