"""audit_guard.sources._columns (C) gives exactly what the Python column conversions give, value
and type, on generated columns of every kind of value a log field holds — or declines (None)
and the Python path runs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_guard.sources import columns

COLUMNS = settings(max_examples=500, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])

_DIGITS = st.text("0123456789", min_size=1, max_size=20)
_DECIMALS = st.builds(lambda a, b: f"{a}.{b}", _DIGITS, _DIGITS)
_VALUES = st.one_of(
    _DIGITS, _DECIMALS, st.sampled_from(["", "-", "2048", "200", "0.040", "1764165600.123",
                                         " 5", "+5", "-5", "1_000", "٣", "5.", ".5", "1.2.3",
                                         "1e3", "inf", "nan", "10, 20 : 30", "x"]),
    st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(),
    st.text(max_size=5), st.just({"a": 1}), st.just([1]),
)
# A column: a few distinct values repeated, as log columns are (the decoder shares equal ones).
_COLUMN = st.lists(_VALUES, min_size=1, max_size=6).flatmap(
    lambda pool: st.lists(st.sampled_from(pool), max_size=40))


def _typed(values: list | None) -> list | None:
    return None if values is None else [(type(v), v) for v in values]


def _both(monkeypatch: pytest.MonkeyPatch, convert, col: list) -> tuple:  # noqa: ANN001
    native = convert(list(col))
    with monkeypatch.context() as patch:
        patch.setattr(columns, "_native", None)
        python = convert(list(col))
    return native, python


def test_the_c_extension_is_built() -> None:
    assert columns._native is not None, "sources._columns was not built: pip install -e ."


@COLUMNS
@given(_COLUMN)
def test_ints_and_seconds_as_python(col: list) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        for convert in (columns.ints, columns.last_ints,
                        lambda c: columns.ints(c, few_distinct=True), columns.seconds_ns,
                        lambda c: columns.seconds_ns(c, few_distinct=True)):
            native, python = _both(monkeypatch, convert, col)
            assert _typed(native) == _typed(python)


@COLUMNS
@given(_COLUMN)
def test_text_column_as_python(col: list) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        (native, native_all_str), (python, python_all_str) = _both(
            monkeypatch, columns.text_column, col)
        assert (_typed(native), native_all_str) == (_typed(python), python_all_str)


def test_the_common_columns_are_taken_in_c() -> None:
    assert columns._native.ints(["200", "200", "", 404, None]) == [200, 200, None, 404, None]
    assert columns._native.seconds_ns([1764165600.123, "0.040", "-"]) == [
        1764165600123000000, 40000000, None]
    assert columns._native.texts(["a", "", "-", "b"]) == ["a", None, None, "b"]
    for declined in (columns._native.ints(["1.5"]), columns._native.seconds_ns([True]),
                     columns._native.texts(["a", 1])):
        assert declined is None
