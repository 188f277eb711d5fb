"""audit_guard._span_rows (C) joins a batch's spans exactly as the Python path does
(span_encoding.join_rows_python): generated parts of every kind, and a real batch's spans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_guard import span_encoding
from audit_guard.config import Settings
from audit_guard.pipeline import Pipeline
from audit_guard.span_encoding import (
    frame_spans,
    frame_spans_python,
    join_rows,
    join_rows_python,
)
from tests.support.otlp_doubles import logs_request


def _parts(n: int) -> st.SearchStrategy[list]:
    rows = st.lists(st.binary(max_size=12), min_size=n, max_size=n)
    part = st.one_of(
        st.binary(max_size=6),  # the same in every row
        rows,
        st.tuples(st.integers(1, 20), rows),  # ids, cut or zero-padded
        st.tuples(st.just(0), st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)),
    )
    return st.lists(part, max_size=12)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 8).flatmap(lambda n: st.tuples(st.just(n), _parts(n))))
def test_join_as_python(case: tuple[int, list]) -> None:
    n, parts = case
    assert span_encoding._join_native is not None, "_span_rows was not built: pip install -e ."
    assert join_rows(n, parts) == join_rows_python(n, parts)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([0, 1, 127, 128, 16383, 16384, 20000]).map(lambda n: b"s" * n)
                | st.binary(max_size=300), max_size=8))
def test_frame_as_python(spans: list[bytes]) -> None:
    """Spans framed into ScopeSpans.spans fields: 1-, 2- and 3-byte lengths alike."""
    assert frame_spans(spans) == frame_spans_python(spans)


def test_a_part_of_another_length_is_refused() -> None:
    for join in (join_rows, join_rows_python):
        with pytest.raises(ValueError):
            join(2, [b"x", [b"a", b"b", b"c"]])


def test_a_batch_spans_are_the_same_bytes_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [f'{{"msec":"1764165600.{i:03d}","status":"{500 if i % 3 else 200}",'
             f'"request_uri":"/v1/chat-messages","request_method":"POST",'
             f'"request_id":"{i:032x}","user_id":"u{i}"}}' for i in range(1, 40)]
    native = Pipeline(Settings()).process_logs(logs_request(*lines), 1764165601_000_000_000)
    monkeypatch.setattr(span_encoding, "_join_native", None)
    python = Pipeline(Settings()).process_logs(logs_request(*lines), 1764165601_000_000_000)
    assert native == python and native[1] == len(lines)
