"""sources/journald.py: Docker's journald entries → the app's lines, and their decoding from an
OTLP request as the collector's journald receiver sends them (map bodies)."""

from __future__ import annotations

from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from audit_guard.decode import APP, group_logs
from audit_guard.sources import detect, journald

T_US = 1_764_675_000_000_000  # 2025-12-02T11:30:00Z in µs


def entry(message: Any, at_us: int = T_US, **extra: Any) -> dict[str, Any]:
    fields = {"__REALTIME_TIMESTAMP": str(at_us), "MESSAGE": message, "PRIORITY": "6",
              "CONTAINER_ID": "0123456789ab", "CONTAINER_NAME": "app"}
    fields.update(extra)
    return fields


def piece(message: str, ordinal: int, last: bool, piece_id: str = "p1") -> dict[str, Any]:
    extra = {"CONTAINER_PARTIAL_ID": piece_id, "CONTAINER_PARTIAL_ORDINAL": str(ordinal),
             "CONTAINER_PARTIAL_LAST": "true" if last else "false"}
    if not last:
        extra["CONTAINER_PARTIAL_MESSAGE"] = "true"
    return entry(message, T_US + ordinal, **extra)


def lines(*entries: dict[str, Any] | None) -> list[journald.ContainerLine]:
    return journald.recombine(enumerate(entries, 1))


def test_a_whole_entry_is_its_message_with_its_container() -> None:
    (line,) = lines(entry('{"a":1}'))
    assert (line.content, line.partial, line.malformed) == ('{"a":1}', False, False)
    assert line.observed_time_unix_nano == T_US * 1000
    assert line.attrs == {"CONTAINER_NAME": "app", "CONTAINER_ID": "0123456789ab"}


def test_docker_20_pieces_are_joined_by_their_id_around_other_lines() -> None:
    out = lines(piece("ab", 1, False), entry("other", CONTAINER_ID="ffffffffffff"),
                piece("cd", 2, False), piece("ef", 3, True))
    assert [(x.line, x.content, x.partial) for x in out] == [(1, "abcdef", False),
                                                            (2, "other", False)]
    assert out[0].observed_time_unix_nano == (T_US + 1) * 1000  # the first piece's


def test_old_docker_pieces_end_at_the_streams_next_entry() -> None:
    out = lines(entry("ab", CONTAINER_PARTIAL_MESSAGE="true"),
                entry("err", PRIORITY="3"),  # stderr: another stream, not the end of the line
                entry("cd"))
    assert [(x.content, x.stream, x.partial) for x in out] == [("abcd", "stdout", False),
                                                              ("err", "stderr", False)]


def test_a_line_whose_last_piece_never_came_is_partial_not_dropped() -> None:
    out = lines(piece("ab", 1, False), entry("next"))
    assert [(x.content, x.partial) for x in out] == [("ab", True), ("next", False)]


def test_a_missing_ordinal_makes_the_line_partial() -> None:
    (line,) = lines(piece("ab", 1, False), piece("ef", 3, True))
    assert (line.content, line.partial) == ("abef", True)
    (line,) = lines(piece("ef", 2, True))  # its first piece is missing
    assert line.partial


def test_a_message_journalctl_elided_is_partial_and_one_without_message_malformed() -> None:
    elided, bare, not_json = lines(entry(None), {"__REALTIME_TIMESTAMP": str(T_US)}, None)
    assert (elided.content, elided.partial, elided.malformed) == ("", True, False)
    assert bare.malformed and bare.observed_time_unix_nano == T_US * 1000
    assert not_json.malformed and not_json.observed_time_unix_nano is None


def test_binary_messages_are_decoded_never_dropped() -> None:
    # journalctl writes a value that is not UTF-8 as an array of byte values; a collector that
    # read it as JSON hands them on as floats.
    assert journald.message_text([104, 105, 255]) == "hi\ufffd"
    assert journald.message_text([104.0, 105.0]) == "hi"
    assert journald.message_text(["a", "b"]) == "a\nb"  # a field given twice


def test_observed_time_is_the_senders_when_journald_knows_it() -> None:
    assert journald.observed_ns(entry("x", _SOURCE_REALTIME_TIMESTAMP=str(T_US - 5))) == (
        (T_US - 5) * 1000)
    assert journald.observed_ns(entry("x")) == T_US * 1000
    assert journald.observed_ns(entry("x", __REALTIME_TIMESTAMP="soon")) is None
    assert journald.observed_ns(entry("x", __REALTIME_TIMESTAMP="9" * 30)) is None  # > 2262


def test_journalctl_json_is_detected_and_its_lines_read() -> None:
    sample = [orjson.dumps({**entry('{"ts":"2025-12-02T11:30:00Z","message":"m","level":"info"}'),
                            "__CURSOR": "s=1"}) for _ in range(3)]
    assert journald.detect_format(sample)
    assert not journald.detect_format([b'{"message":"m","level":"info"}'])
    found = detect.detect(sample)
    assert (found.format, found.inner) == ("journald", "app")
    forced = detect.forced("app", sample, "--source app")
    assert (forced.format, forced.inner) == ("journald", "app")


# ------------------------------------------------------------------------- decode (serve)


def receiver_request(*entries: dict[str, Any], source: str = "journald"
                     ) -> ExportLogsServiceRequest:
    """As the journald receiver sends them: the body is the map of the entry's fields."""
    req = ExportLogsServiceRequest()
    resource_logs = req.resource_logs.add()
    kv = resource_logs.resource.attributes.add()
    kv.key, kv.value.string_value = "audit.source", source
    scope = resource_logs.scope_logs.add()
    for fields in entries:
        body = scope.log_records.add().body.kvlist_value
        for key, value in fields.items():
            member = body.values.add()
            member.key = key
            if isinstance(value, list):
                for b in value:
                    member.value.array_value.values.add().double_value = b
            elif value is not None:
                member.value.string_value = value
    return req


def test_decode_makes_journal_entries_app_rows() -> None:
    groups = group_logs(receiver_request(
        entry('{"a":1}', _SOURCE_REALTIME_TIMESTAMP=str(T_US - 7)),
        piece("ab", 1, False, "p9"), entry([104.0, 105.0])))
    rows = groups[APP]
    assert rows.bodies == ['{"a":1}', "ab", "hi"]
    assert rows.observed == [(T_US - 7) * 1000, (T_US + 1) * 1000, T_US * 1000]
    assert rows.partial == {1}
    assert set(groups) == {APP}


def test_an_entry_read_again_is_the_same_record_a_line_written_twice_a_duplicate() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from audit_guard.config import load_settings
    from audit_guard.pipeline import Pipeline

    line = ('{"ts":"2025-12-02T11:30:00Z","message":"m","trace_id":"' + "ab" * 16 + '",'
            '"user_id":"u","app_id":"a","method":"GET","path":"/v1/x","status":200}')
    other = line.replace("ab" * 16, "cd" * 16)
    pipeline = Pipeline(load_settings())

    def spans(*entries: dict[str, Any]) -> dict[str, tuple[bytes, bool]]:
        """As serve computes them: trace id → (span id, flagged duplicate)."""
        data, _ = pipeline.process_logs(receiver_request(*entries), T_US * 1000)
        out = {}
        for rs in ExportTraceServiceRequest.FromString(data).resource_spans:
            for span in (s for ss in rs.scope_spans for s in ss.spans):
                flags = [v.string_value for a in span.attributes if a.key == "audit.flags"
                         for v in a.value.array_value.values]
                out[span.trace_id.hex()] = (span.span_id, "duplicate" in flags)
        return out

    (first,) = spans(entry(line, __CURSOR="s=1;i=1")).values()
    assert not first[1]
    # The collector read it again (its cursor was not saved), in another request.
    again = spans(entry(other, __CURSOR="s=1;i=0"), entry(line, __CURSOR="s=1;i=1"))
    assert again["ab" * 16] == first
    # The app wrote the same line twice: another entry, another cursor.
    (twice,) = spans(entry(line, __CURSOR="s=1;i=2")).values()
    assert twice[1] and twice[0] != first[0]


def test_export_format_with_a_binary_field_a_repeated_one_and_a_cut_end() -> None:
    binary = b"a\nb\xff"
    data = (b"__CURSOR=s=1\n__REALTIME_TIMESTAMP=1\nMESSAGE\n" + len(binary).to_bytes(8, "little")
            + binary + b"\nTAG=x\nTAG=y\n\n__CURSOR=s=2\n__REALTIME_TIMESTAMP=2\nMESSAGE=two\n\n"
            + b"__CURSOR=s=3\nMESSAGE\n" + (100).to_bytes(8, "little") + b"cut")
    (n1, e1), (n2, e2), (n3, e3) = journald.parse_export(data)
    assert (n1, e1["MESSAGE"], e1["TAG"]) == (1, "a\nb\ufffd", ["x", "y"])
    assert (n2, e2["MESSAGE"]) == (9, "two")
    assert (n3, e3["MESSAGE"]) == (13, "cut")  # the end of the data: what is there is kept
    assert journald.entries(data) == journald.parse_export(data)
    assert journald.is_export(data.split(b"\n")[:3])
    assert not journald.is_export([b'{"__REALTIME_TIMESTAMP":"1"}', b"PLAIN=1"])


def test_an_export_sample_is_split_into_its_entries_for_detection() -> None:
    lines = [b"__CURSOR=s=1", b"__REALTIME_TIMESTAMP=1", b'MESSAGE={"level":"info","msg":"a"}',
             b"__CURSOR=s=2", b"__REALTIME_TIMESTAMP=2", b'MESSAGE={"level":"info","msg":"b"}']
    sampled = journald.sample_entries(list(enumerate(lines, 1)))
    assert [(n, e and e["MESSAGE"]) for n, e in sampled] == [
        (1, '{"level":"info","msg":"a"}'), (4, '{"level":"info","msg":"b"}')]
    found = detect.detect(lines)
    assert (found.format, found.inner) == ("journald", "app")


def test_no_field_value_fails_the_request() -> None:
    odd: list[Any] = ["", "²", "9" * 5000, "-1", "true", "false", "\udcff", [], [300], [1.5],
                      ["x", 1], None, "1" * 9, "0"]
    keys = [journald.MESSAGE, journald.REALTIME, journald.SOURCE_REALTIME,
            journald.PARTIAL_MESSAGE, journald.PARTIAL_ID, journald.PARTIAL_ORDINAL,
            journald.PARTIAL_LAST, journald.CURSOR, "PRIORITY", "CONTAINER_ID"]
    entries = [{key: odd[(i + k) % len(odd)] for k, key in enumerate(keys)}
               for i in range(len(odd) * 3)]
    for fields in entries:  # alone and all together
        journald.recombine([(1, fields)])
    def carried(value: Any) -> bool:  # what an OTLP map body can hold (no lone surrogates)
        if isinstance(value, list):
            return all(isinstance(b, (int, float)) for b in value)
        return value is None or value.isascii() or "\udcff" not in value

    rows = group_logs(receiver_request(*[{k: v for k, v in e.items() if carried(v)}
                                         for e in entries]))[APP]
    assert len(rows.bodies) == len(rows.observed)
