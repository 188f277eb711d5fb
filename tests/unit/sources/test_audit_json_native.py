"""The C decoder of the shipped nginx format (audit_guard.sources._audit_json, built by
setup.py) is the one parse_lines uses, and decodes every line it takes exactly as msgspec
decodes it into AuditJsonLine: the same values of the same types. The lines it leaves are
msgspec's; a line msgspec refuses is never taken. A batch parses to the same records with and
without it, over mutated lines of the fuzz corpus (cuts, flips, huge and odd values).

scripts/bootstrap installs gcc, so a dev setup without the module is a broken setup: the import
below fails the tests rather than skipping them."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_guard.record import COLUMNS, RecordBatch
from audit_guard.sources import _audit_json as native
from audit_guard.sources import nginx_access
from audit_guard.sources.nginx_access import AUDIT_JSON_KEYS, AuditJsonLine, AuditJsonRows
from tests.support.fuzz_corpus import SEEDS, mutated_lines

SHIPPED = orjson.loads(SEEDS["nginx_json"][0])


def line_with(**values: Any) -> bytes:
    """A line of the shipped format (keys in its order) with some values replaced."""
    return orjson.dumps({**SHIPPED, **values})


def msgspec_row(line: bytes | str) -> tuple[Any, ...] | None:
    try:
        return msgspec.structs.astuple(nginx_access._AUDIT_JSON.decode(line))
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return None


def typed(values: Any) -> list[tuple[type, Any]]:
    """Values with their types: True == 1 == 1.0, but msgspec keeps them apart."""
    return [(type(v), v) for v in values]


def check_line(line: bytes | str) -> bool:
    """Assert the decoder agrees with msgspec on `line`; True when the decoder took it."""
    columns, fallback = native.decode([line], AUDIT_JSON_KEYS)
    expected = msgspec_row(line)
    if fallback == [0]:
        assert all(col == [None] for col in columns)
        return False
    assert fallback == []
    assert expected is not None, f"taken, but msgspec refuses it: {line!r}"
    assert typed(col[0] for col in columns) == typed(expected), line
    return True


def test_parse_lines_uses_the_native_decoder() -> None:
    assert nginx_access._decode_columns is native.decode
    batch = nginx_access.parse_lines([SEEDS["nginx_json"][0]] * 3)
    assert isinstance(batch.fields, AuditJsonRows)


@pytest.mark.parametrize("value", [
    0, -0, 7, -12, 200, 123456789012345678, -123456789012345678,  # ints of up to 18 digits
    0.0, -0.0, 1.5, 0.042, 1764165600.123, 1764165600.999, 99999.9999999999, -3.25,
    "", "-", "OK", "text/event-stream", "10.0.0.1, 10.0.0.2 : 10.0.0.3", " spaced ",
    True, False, None,
])
def test_plain_values_decode_as_msgspec_decodes_them(value: Any) -> None:
    for key in ("msec", "status", "connection", "user_id"):
        assert check_line(line_with(**{key: value}))


@pytest.mark.parametrize("spelling", [
    b"1234567890123456789", b"12345678901234567890123", b"1e5", b"1E+5", b"2.5e-3",
    b"0.1234567890123456", b"123456789.12345678", b"01", b"-", b"1.", b".5", b"- 1", b"+1",
    b'"a\\"b"', b'"tab\\there"', b'"\\u00e9"', b'"caf\xc3\xa9"', b'"\xff"', b'"a\tb"',
    b"[1,2]", b'{"a":1}', b"tru", b"nul", b"NaN", b"Infinity",
])
def test_other_values_are_left_to_msgspec(spelling: bytes) -> None:
    line = line_with(msec="@@").replace(b'"@@"', spelling)
    assert not check_line(line)


@pytest.mark.parametrize("line", [
    b" \t{ \"time_iso8601\" :\r\n" + line_with()[16:] + b" \n",  # JSON whitespace anywhere
    line_with() + b"\n",
])
def test_json_whitespace_is_allowed(line: bytes) -> None:
    assert check_line(line)
    assert check_line(line.decode())


@pytest.mark.parametrize("line", [
    line_with()[:-1],  # cut
    line_with()[:200],
    line_with() + b"x",  # trailing garbage
    line_with() + b"}",
    orjson.dumps({k: v for k, v in SHIPPED.items() if k != "host"}),  # a key missing
    orjson.dumps({**SHIPPED, "extra": 1}),  # a key more
    orjson.dumps(dict(reversed(list(SHIPPED.items())))),  # another order
    line_with().replace(b'"host"', b'"hosT"'),
    b"", b"{}", b"[]", b"null", b"x",
])
def test_lines_not_of_the_format_are_left(line: bytes) -> None:
    assert not check_line(line)


def test_str_and_bytes_lines_decode_alike() -> None:
    line = line_with(user_id="user-1", msec=1764165600.5)
    assert check_line(line) and check_line(line.decode())
    assert not check_line(line_with(user_id="ü").decode())  # a non-ASCII str: msgspec's


def test_mutated_corpus_lines_agree_with_msgspec() -> None:
    rnd = random.Random(11)
    lines = mutated_lines("nginx_json", 4000, rnd, clean_share=0.3, allow_huge=False)
    taken = sum(check_line(line) for line in lines)
    assert taken > 1000  # the clean share and mutations of values that stay plain


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(AUDIT_JSON_KEYS), st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)), max_size=6))
def test_generated_values_agree_with_msgspec(values: dict[str, Any]) -> None:
    line = line_with(**values)
    check_line(line)
    check_line(line.decode())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(st.characters(codec="ascii"), max_size=40), st.integers(0, 40),
       st.sampled_from(['"', "\\", "\n", "\x01", "\x7f", "é", "€", "\U0001f600"]))
def test_a_string_ends_where_it_ends_eight_bytes_a_step(text: str, at: int, odd: str) -> None:
    """The string scan takes eight bytes a step: a quote, backslash, control character or
    non-ASCII byte anywhere in a string of any length is found where it is."""
    for value in (text, text[:at] + odd + text[at:]):
        plain = all(" " <= c < "\x80" and c not in '"\\' for c in value)
        line = line_with(http_user_agent=value, request_uri=value)
        assert check_line(line) == plain  # taken exactly when the string is plain
        check_line(line.decode())


def test_equal_values_of_a_column_are_one_object() -> None:
    lines = [line_with(request_id=f"{i:032x}", user_id=f"user-{i % 3}") for i in range(50)]
    columns, fallback = native.decode(lines, AUDIT_JSON_KEYS)
    assert fallback == []
    users = columns[AUDIT_JSON_KEYS.index("user_id")]
    hosts = columns[AUDIT_JSON_KEYS.index("host")]
    assert len({id(v) for v in users}) == 3 and len({id(v) for v in hosts}) == 1
    assert len(set(columns[AUDIT_JSON_KEYS.index("request_id")])) == 50


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(TypeError):
        native.decode([b"{}"], list(AUDIT_JSON_KEYS))
    with pytest.raises(TypeError):
        native.decode([b"{}"], ("ü",))
    with pytest.raises(ValueError):
        native.decode([b"{}"], ())
    with pytest.raises(TypeError):
        native.decode(None, AUDIT_JSON_KEYS)
    assert native.decode([None, 5], AUDIT_JSON_KEYS)[1] == [0, 1]  # not a line: the caller's


def records(batch: RecordBatch) -> list[dict[str, Any]]:
    out = []
    for rec in batch.rows():
        row = {name: getattr(rec, name) for name in COLUMNS}
        row["flags"] = rec.flags
        fields = row.pop("fields")
        row["fields"] = fields.to_dict() if isinstance(fields, AuditJsonLine) else fields
        out.append(row)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_parse_alike_with_and_without_the_native_decoder(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    clean = [line_with(request_id=f"{rnd.getrandbits(128):032x}") for _ in range(300)]
    batches = [
        clean,
        # a few lines the decoder leaves (escapes, non-ASCII, long numbers), all of the format
        [line_with(http_user_agent='Mozilla "quoted"'), *clean[:50],
         line_with(request_uri="/caf\u00e9"),
         line_with(connection="@@").replace(b'"@@"', b"1" * 20)],
        [line.decode() for line in clean[:80]],
        mutated_lines("nginx_json", 300, rnd, clean_share=0.5, allow_huge=False),
    ]
    with_native = [records(nginx_access.parse_lines(lines)) for lines in batches]
    monkeypatch.setattr(nginx_access, "_decode_columns", None)
    without = [records(nginx_access.parse_lines(lines)) for lines in batches]
    assert with_native == without


def test_rows_read_like_a_list_of_lines() -> None:
    lines = [line_with(connection=i, server_name=f"s{i}") for i in range(5)]
    batch = nginx_access.parse_lines(lines)
    rows = batch.fields
    structs = [nginx_access._AUDIT_JSON.decode(line) for line in lines]
    assert isinstance(rows, AuditJsonRows) and len(rows) == 5
    assert rows[3] == structs[3] and rows[-1] == structs[-1]
    assert list(rows) == structs and rows == structs
    assert isinstance(rows[1:3], AuditJsonRows) and list(rows[1:3]) == structs[1:3]
    assert batch.field_column("server_name") == [f"s{i}" for i in range(5)]
    assert batch.field_column("no_such_key") == [None] * 5
    assert batch.slice(1, 3).field_column("connection") == [1, 2]
    column = rows.column("connection")
    assert column is not None
    column.append(99)  # a copy: the rows are unchanged
    assert len(rows.column("connection") or ()) == 5


def test_serve_warns_at_start_when_the_decoder_was_not_built(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from audit_guard import serve

    with caplog.at_level("WARNING", logger="audit_guard"):
        serve._warn_without_native_decoder()
    assert not caplog.records  # built: nothing said
    monkeypatch.setattr(nginx_access, "_decode_columns", None)
    with caplog.at_level("WARNING", logger="audit_guard"):
        serve._warn_without_native_decoder()
    (record,) = caplog.records
    assert "audit_guard.sources._audit_json" in record.getMessage()
    assert "reinstall with gcc" in record.getMessage()
