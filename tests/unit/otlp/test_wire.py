"""audit_guard.wire: a logs request read straight from its bytes (the C reader `_logs_wire`)
gives what protobuf (upb) and audit_guard.decode give for it, for requests of every shape
(hypothesis) and for their bytes cut and flipped; a request of another shape is parsed by upb.

The reference reads every record's own offset (decode predicts a run's offsets from its lines'
sizes; the reader takes each record's, see audit_guard.wire), so it is exact for any offsets.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from audit_guard import decode
from audit_guard.wire import WireRequest, group_logs, native_reader, read_logs_request, request_time

EXAMPLES = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


FILE_PATH = "/var/log/nginx/audit.json.log"


def _file_log_request(n: int) -> bytes:
    """n lines of one file as the collector's file_log/nginx_access receiver sends them."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="audit.source").value.string_value = "nginx"
    resource_logs.resource.attributes.add(key="host.name").value.string_value = "web-1"
    scope = resource_logs.scope_logs.add()
    offset = 0
    for i in range(n):
        line = f'{{"msec":"1764165600.{i % 1000:03d}","status":"200","uri":"/v1/é{i}"}}'
        record = scope.log_records.add()
        record.observed_time_unix_nano = 1764165600_000_000_000 + i
        record.body.string_value = line
        record.attributes.add(key="log.file.path").value.string_value = FILE_PATH
        record.attributes.add(key="log.file.name").value.string_value = "audit.json.log"
        record.attributes.add(key="log.file.record_offset").value.int_value = offset
        offset += len(line.encode()) + 1
    return request.SerializeToString()


def _reference(raw: bytes, exact: bool) -> tuple[dict, int] | None:
    """decode's groups and read time of the request upb parses from `raw` (None: upb refuses
    it); `exact`: every record's offset read from the record, as the reader reads them."""
    try:
        request = ExportLogsServiceRequest.FromString(raw)
    except DecodeError:
        return None
    with pytest.MonkeyPatch.context() as patch:
        if exact:
            patch.setattr(decode, "_predicted_offsets", lambda *_: None)
        return decode.group_logs(request), decode.request_time(request)


def _read(raw: bytes) -> tuple[object, dict, int] | None:
    try:
        request = read_logs_request(raw)
    except DecodeError:
        return None
    return request, group_logs(request), request_time(request)


def test_the_c_reader_is_built() -> None:
    assert native_reader(), "audit_guard._logs_wire was not built: pip install -e . (setup.py)"


def test_the_collectors_requests_are_read_from_their_bytes() -> None:
    raw = _file_log_request(3000)
    request, groups, read_ns = _read(raw)
    assert isinstance(request, WireRequest)
    assert (groups, read_ns) == _reference(raw, exact=True) == _reference(raw, exact=False)
    rows = groups["nginx"]
    assert len(rows.bodies) == 3000 and read_ns == 1764165600_000_000_000
    assert rows.offsets[:2] == [0, len(rows.bodies[0].encode()) + 1]
    host, path = (KeyValue(key=key, value=AnyValue(string_value=value)).SerializeToString()
                  for key, value in (("host.name", "web-1"), ("log.file.path", FILE_PATH)))
    assert rows.origins == [(0, (host, path))]


# -- requests of every shape ------------------------------------------------------------------
_TEXT = st.sampled_from(["", "x", "/var/log/nginx/audit.json.log", "/var/log/a.log", "é€",
                         "line with \\n", "{\"status\":200}", "\U0001f600"])
# Read from the bytes: Nginx's and pgaudit's sources (and unknown names, read as Nginx's);
# parsed by upb: the app's (their records' times and flags are read too), the wrappers', "".
_SOURCES = st.sampled_from([None, "nginx", "nginx", "nginx", "nginx", "nginx", "nginx_access",
                            "nginx_error", "pgaudit", "postgres", "other", "app", "dify",
                            "journald", "syslog", ""])


@st.composite
def _value(draw: st.DrawFn, target) -> None:  # noqa: ANN001 - an AnyValue to fill
    kind = draw(st.sampled_from(["string", "int", "bool", "double", "bytes", "array", "kvlist",
                                 "none"]))
    if kind == "string":
        target.string_value = draw(_TEXT)
    elif kind == "int":
        target.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "bool":
        target.bool_value = draw(st.booleans())
    elif kind == "double":
        target.double_value = draw(st.floats(allow_nan=False))
    elif kind == "bytes":
        target.bytes_value = draw(st.binary(max_size=4))
    elif kind == "array":
        target.array_value.values.add().string_value = draw(_TEXT)
    elif kind == "kvlist":
        target.kvlist_value.values.add(key="k").value.string_value = draw(_TEXT)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """Mostly the collector's usual shape (so the reader reads most), with odd parts drawn in
    now and then: other bodies, attributes, sources, files, offsets that do not follow."""
    request = ExportLogsServiceRequest()
    offset = draw(st.integers(0, 10**6))
    consistent = draw(st.integers(0, 3)) > 0  # offsets of consecutive lines, as file_log's
    with_offsets = draw(st.integers(0, 3)) > 0
    odd = draw(st.sampled_from([0, 0, 0, 10, 40, 200]))  # 1 in `odd` parts is odd (0: none)

    def rare() -> bool:
        return bool(odd) and draw(st.integers(1, odd)) == 1

    for _ in range(draw(st.integers(0 if rare() else 1, 3))):
        resource_logs = request.resource_logs.add()
        source = draw(_SOURCES)
        if source is not None:
            resource_logs.resource.attributes.add(key="audit.source").value.string_value = source
        for key in draw(st.lists(st.sampled_from(["host.name", "container.id"]), max_size=2)):
            value = resource_logs.resource.attributes.add(key=key).value
            value.string_value = draw(_TEXT.filter(bool))
            if rare():
                draw(_value(value))
        if rare():
            resource_logs.resource.attributes.add(key="audit.source").value.string_value = "app"
        for _ in range(draw(st.integers(0 if rare() else 1, 3))):
            scope = resource_logs.scope_logs.add()
            if draw(st.booleans()):
                scope.scope.name = draw(_TEXT)
            for _ in range(draw(st.integers(0, 6))):
                record = scope.log_records.add()
                line = draw(st.text(min_size=1, max_size=30))
                if not rare():
                    record.body.string_value = line
                else:
                    draw(_value(record.body))
                if draw(st.integers(0, 3)) == 0:
                    record.time_unix_nano = draw(st.integers(0, 2**64 - 1))
                if draw(st.integers(0, 3)):
                    record.observed_time_unix_nano = draw(st.integers(0, 2**64 - 1))
                keys = ["log.file.path", "log.file.name"]
                keys += ["log.file.record_offset"] if with_offsets != rare() else []
                if rare():
                    keys += draw(st.lists(st.sampled_from([
                        "log.file.path", "log.file.record_offset", "audit.source",
                        "audit.partial", "log.iostream"]), min_size=1, max_size=3))
                for key in keys:
                    value = record.attributes.add(key=key).value
                    if key == "log.file.record_offset" and not rare():
                        value.int_value = offset if consistent else draw(st.integers(-9, 99))
                    elif key == "log.file.path" and not rare():
                        value.string_value = draw(st.sampled_from(["/a.log", "/a.log", "/b.log"]))
                    elif key == "log.file.name" and not rare():
                        value.string_value = "a.log"
                    else:
                        draw(_value(value))
                offset += len(line.encode("utf-8", "surrogatepass")) + 1
    return request.SerializeToString()


@EXAMPLES
@given(_requests())
def test_every_request_is_grouped_as_protobuf_groups_it(raw: bytes) -> None:
    got = _read(raw)
    assert got is not None
    assert got[1:] == _reference(raw, exact=isinstance(got[0], WireRequest))


@EXAMPLES
@given(_requests(), st.data())
def test_cut_or_flipped_bytes_are_read_as_protobuf_reads_them(raw: bytes, data) -> None:  # noqa: ANN001
    raw = bytearray(raw or _file_log_request(2))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            del raw[at:]
            if not raw:
                break
    got = _read(bytes(raw))
    if got is None:
        assert _reference(bytes(raw), exact=False) is None
    else:
        assert got[1:] == _reference(bytes(raw), exact=isinstance(got[0], WireRequest))


def test_a_request_of_another_shape_is_parsed_by_protobuf() -> None:
    request = ExportLogsServiceRequest.FromString(_file_log_request(3))
    assert isinstance(read_logs_request(request.SerializeToString()), WireRequest)
    shapes = {
        "a map body": lambda r: r.body.kvlist_value.values.add(key="k"),
        "an empty body": lambda r: r.body.ClearField("string_value"),
        "a record's own audit.source": lambda r: r.attributes.add(key="audit.source"),
        "a string offset": lambda r: setattr(r.attributes[2].value, "string_value", "1"),
    }
    for shape, change in shapes.items():
        odd = ExportLogsServiceRequest()
        odd.CopyFrom(request)
        change(odd.resource_logs[0].scope_logs[0].log_records[1])
        assert isinstance(read_logs_request(odd.SerializeToString()),
                          ExportLogsServiceRequest), shape
    app = ExportLogsServiceRequest()
    app.CopyFrom(request)
    app.resource_logs[0].resource.attributes[0].value.string_value = "dify"
    assert isinstance(read_logs_request(app.SerializeToString()), ExportLogsServiceRequest)


def test_bytes_that_are_not_a_request_fail_as_protobuf_fails() -> None:
    with pytest.raises(DecodeError):
        read_logs_request(b"\x0a\x05\x12")
