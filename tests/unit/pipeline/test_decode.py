"""decode: the file offsets predicted from the lines' sizes are exactly what the collector sent,
or not used (the records are then read one by one) — whatever the lines and files look like."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.logs.v1.logs_pb2 import ScopeLogs

from audit_guard.decode import _record_offsets

# A line as written to its file: its text, then what the collector trims (trailing whitespace,
# the "\r" of CRLF), then whether a blank line follows (not a record).
LINES = st.lists(st.tuples(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
            min_size=1, max_size=40).map(str.strip).filter(bool),
    st.sampled_from(["", "", "", " ", "\r", "\t "]),
    st.booleans()), min_size=3, max_size=60)


def scope(files: list[list[tuple[str, str, bool]]], interleave: bool) -> ScopeLogs:
    """Records as file_log sends them: body = the trimmed line, offset = where it starts."""
    out = []
    for n, lines in enumerate(files):
        offset = 0
        for text, trimmed, blank_after in lines:
            out.append((n, text, offset))
            offset += len((text + trimmed).encode()) + 1 + (1 if blank_after else 0)
    if interleave:
        out.sort(key=lambda r: (r[2], r[0]))
    s = ScopeLogs()
    for n, text, offset in out:
        record = s.log_records.add()
        record.body.string_value = text
        record.attributes.add(key="log.file.path").value.string_value = f"/var/log/{n}.log"
        record.attributes.add(key="log.file.record_offset").value.int_value = offset
    return s


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=3), st.booleans())
def test_predicted_offsets_are_the_collectors_or_not_used(files, interleave) -> None:
    records = scope(files, interleave).log_records
    lines = [r.body.string_value for r in records]
    assert _record_offsets(records, lines) == _record_offsets(records, None)


def test_one_plain_file_is_predicted() -> None:
    from audit_guard import decode

    records = scope([[(f"line {i} é", "", False) for i in range(50)]], False).log_records
    calls = []
    real = decode._offset_at
    decode._offset_at = lambda r, at: calls.append(1) or real(r, at)  # type: ignore[assignment]
    try:
        offsets = _record_offsets(records, [r.body.string_value for r in records])
    finally:
        decode._offset_at = real  # type: ignore[assignment]
    assert offsets == [r.attributes[1].value.int_value for r in records]
    assert len(calls) == 3  # the first, the middle and the last record only
