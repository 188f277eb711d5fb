"""Parsing nginx JSON access records, the key spellings operators use, and cut lines."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from audit_guard.sources.jsonline import decode_json_object
from audit_guard.sources.nginx_access import parse_line, parse_mapping

FULL = {
    "time_iso8601": "2026-11-26T14:00:00+00:00",
    "msec": "1764165600.123",
    "request_id": "0123456789abcdef0123456789abcdef",
    "remote_addr": "10.0.0.7",
    "request_method": "POST",
    "request_uri": "/v1/chat-messages?conversation=1",
    "uri": "/v1/chat-messages",
    "status": "200",
    "body_bytes_sent": "1234",
    "request_time": "0.250",
    "request_completion": "OK",
    "http_user_agent": "curl/8.0",
    "host": "api.example.com",
    "user_id": "u1",
    "app_id": "a1",
}


def test_nginx_variable_names_with_string_numbers() -> None:
    rec = parse_line(orjson.dumps(FULL))
    assert (rec.method, rec.path, rec.status) == ("POST", "/v1/chat-messages", 200)
    assert (rec.user_id, rec.app_id) == ("u1", "a1")
    assert rec.time_unix_nano == 1764165600_123_000_000  # exact: no float rounding
    assert rec.duration_ns == 250_000_000
    assert rec.client_address == "10.0.0.7"
    assert rec.server_address == "api.example.com"
    assert rec.user_agent == "curl/8.0"
    assert rec.body_bytes_sent == 1234
    assert rec.flags == []


def test_short_names_and_real_numbers() -> None:
    line = (
        '{"time":"2026-11-26T14:00:00Z","method":"get","path":"/v1/datasets","status":403,'
        '"ip":"127.0.0.1","user_id":"u2","app_id":"a2","request_time":0.5,"msec":1764165600.5}'
    )
    rec = parse_line(line)
    assert (rec.method, rec.path, rec.status, rec.client_address) == (
        "GET", "/v1/datasets", 403, "127.0.0.1",
    )
    assert rec.time_unix_nano == 1764165600_500_000_000
    assert rec.duration_ns == 500_000_000


def test_iso_time_used_when_no_msec() -> None:
    rec = parse_mapping({"time_iso8601": "2026-11-26T14:00:00+01:00", "uri": "/"})
    expected = datetime(2026, 11, 26, 13, 0, tzinfo=UTC).timestamp()
    assert rec.time_unix_nano == int(expected) * 1_000_000_000


def test_http_x_user_id_and_upstream_header_spellings() -> None:
    rec = parse_mapping({"http_x_user_id": "u9", "upstream_http_x_audit_app_id": "app9"})
    assert (rec.user_id, rec.app_id) == ("u9", "app9")


def test_empty_and_dash_mean_absent() -> None:
    rec = parse_mapping({"user_id": "", "app_id": "-", "status": "200"})
    assert rec.user_id is None and rec.app_id is None


def test_cut_json_is_salvaged_and_flagged() -> None:
    line = orjson.dumps(FULL).decode()
    cut = line[: line.index('"status"') + len('"status":"2')]
    rec = parse_line(cut)
    assert rec.truncation_reasons == ["json_cut"]
    # every complete member before the cut survives
    assert rec.method == "POST" and rec.path == "/v1/chat-messages"
    assert rec.request_id == FULL["request_id"]
    assert rec.status is None


def test_salvage_handles_escaped_quotes_and_commas() -> None:
    result = decode_json_object('{"a":"x\\",\\"b\\":1","c":2,"d":"cu')
    assert result.cut and result.obj == {"a": 'x","b":1', "c": 2}


@pytest.mark.parametrize("line", ["GET / HTTP/1.1 200", '{"a":1,}', "[1,2]", ""])
def test_not_json_is_malformed_not_dropped(line: str) -> None:
    rec = parse_line(line)
    assert "malformed" in rec.flags
    assert rec.truncation_reasons == []


def test_upstream_lists_use_last_attempt(pipeline) -> None:
    rec = parse_mapping(
        {**FULL, "body_bytes_sent": "30", "upstream_response_length": "10, 20 : 30"}
    )
    pipeline.check_one(rec)
    assert not rec.truncation_reasons


def test_zero_padded_status_keeps_the_rest_of_the_line(pipeline) -> None:
    """nginx prints $status with %03d: a request that never got a status logs `000`."""
    rec = pipeline.check_one(parse_line('{"status":000,"uri":"/v1/x","user_id":"u1","msec":"1.0"}'))
    assert "malformed" in rec.flags
    assert rec.path == "/v1/x" and rec.user_id == "u1"
    assert "invalid_field:status" in rec.violations


def test_invalid_utf8_is_salvaged() -> None:
    rec = parse_line(b'{"uri":"/v1/\xff","status":"200"}')
    assert rec.status == 200 and rec.path is not None and "malformed" in rec.flags


@pytest.mark.parametrize("col", [
    [1764165600.123, 1764165600.5, 0.0],  # bare JSON numbers, as the shipped format writes msec
    ["0.042", "0.042", "0.5", "0.042"],  # $request_time: few distinct values
    ["1764165600.123", "inf", "1e400", "nan", "-", "", "x"],  # not finite, not numbers
    [0.042, float("inf"), float("nan")],  # mapped bodies can carry what JSON cannot
    [True, 1, 1.0, "1"],  # equal as dict keys, not as times
])
def test_time_columns_convert_like_each_value(col) -> None:
    from audit_guard.sources.columns import seconds_ns, to_ns

    expected = [to_ns(v) for v in col]
    assert seconds_ns(col) == expected
    assert seconds_ns(col, few_distinct=True) == expected


@pytest.mark.parametrize("col", [
    ["200", "200", "403", "502", "200"],
    ["200", "", "-", "abc", " 200", "1_000", "000"],
    [200, "200", 200.0, True, None],
])
def test_int_columns_convert_like_each_value(col) -> None:
    from audit_guard.sources.columns import ints, to_int

    expected = [to_int(v) for v in col]
    assert ints(col) == expected
    assert ints(col, few_distinct=True) == expected


# -- the column fast paths against the per-value functions (hypothesis) ----------------------
_SCALARS = st.one_of(
    st.sampled_from(["", "-", "--", " ", ",", "+", "200", "000", "1_000", "0.042", "GET",
                     "1764165600.123", "inf", "nan", "1e400", "50, 100", "1 : 2", "-1"]),
    st.text(max_size=8), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True), st.just({}), st.just([1]),
)
_COLUMNS = st.one_of(
    st.lists(_SCALARS, max_size=12),
    st.lists(st.text(max_size=6), max_size=12),  # every value a str: the fast paths
    st.lists(st.sampled_from(["", "-", "200", "x"]), max_size=12),
    st.lists(st.integers(0, 2**40), max_size=12),
    # digit strings: read as one JSON array unless a leading zero or 64 bits say otherwise
    st.lists(st.one_of(st.from_regex(r"[0-9]{1,22}", fullmatch=True),
                       st.sampled_from(["٣", "²", "1,2", "", " 7", "-0", "18446744073709551616"])),
             max_size=12),
    st.lists(st.floats(0, 2e9), max_size=12),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(col=_COLUMNS, as_tuple=st.booleans())
@example(col=["10", "1,2"], as_tuple=False)  # a comma in a value: more numbers than values
@example(col=["007", "7"], as_tuple=True)  # a leading zero: int() reads it, JSON does not
@example(col=["18446744073709551616", "18446744073709551615"], as_tuple=False)  # 64 bits
@example(col=["200", "", "404"], as_tuple=False)
def test_column_fast_paths_equal_the_per_value_functions(col: list, as_tuple: bool) -> None:
    """texts/ints/last_ints/seconds_ns (C-level passes, min() as the every-value-is-a-str
    test, float.__round__) give exactly what their per-value function gives."""
    from audit_guard.sources.columns import (
        ints,
        last_int,
        last_ints,
        least_str,
        seconds_ns,
        text,
        text_column,
        texts,
        to_int,
        to_ns,
    )

    column = tuple(col) if as_tuple else col  # the shipped format's columns are tuples
    all_str = bool(col) and all(v.__class__ is str for v in col)
    assert (least_str(column) is not None) == all_str
    assert texts(column) == [text(v) for v in col]
    out, every_str = text_column(column)
    assert out == [text(v) for v in col] and every_str == all_str
    for few in (False, True):
        assert ints(column, few_distinct=few) == [to_int(v) for v in col]
        assert seconds_ns(column, few_distinct=few) == [to_ns(v) for v in col]
    assert last_ints(column) == [last_int(v) for v in col]


def test_field_column_reads_struct_rows_and_dict_rows_alike() -> None:
    """RecordBatch.field_column: the shipped format's struct rows by attribute, other rows by
    get(), a batch mixing both, and a key that names a method of a dict or of the struct, all as
    get() would."""
    from audit_guard.sources.nginx_access import AuditJsonLine, parse_lines

    shipped = orjson.dumps(dict.fromkeys(AuditJsonLine.__struct_fields__, "x")
                           | {"upstream_status": "502", "server_name": "api"}).decode()
    batch = parse_lines([shipped, shipped])
    assert type(batch.fields[0]) is AuditJsonLine  # the fast path's rows
    assert batch.field_column("upstream_status") == ["502", "502"]
    assert batch.field_column("gzip_ratio") == [None, None]  # not a field of the struct
    assert batch.field_column("to_dict") == [None, None]  # a method of the struct, not a field
    batch.fields = list(batch.fields)  # struct rows in a list (the decoder's are columns)
    assert batch.field_column("upstream_status") == ["502", "502"]
    assert batch.field_column("to_dict") == [None, None]
    batch.fields[1] = {"upstream_status": "200", "keys": "k"}  # a dict row after a struct one
    for key in ("upstream_status", "server_name", "keys", "get", "to_dict"):
        assert batch.field_column(key) == [f.get(key) for f in batch.fields], key
