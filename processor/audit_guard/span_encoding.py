"""The wire encoding of spans: attributes, ids, times and the request around them, as bytes.

Spans are assembled as serialized protobuf, not as message objects (see audit_guard.spans). Every
attribute key/value pair is serialized once and the bytes cached per value (`KeyCache`); each
field's tag bytes are taken from the stubs at import time (never hand-written). A span is the
concatenation of its fields' bytes — protobuf's defined encoding of a message — and spans are
concatenated into ScopeSpans the same way. The only wire-format facts used here are varint
lengths and little-endian fixed64 timestamps. Tests decode every result with the official stubs.
"""

from __future__ import annotations

from itertools import chain, repeat
from struct import Struct
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

try:  # setup.py builds it; where it could not be built, the *_python functions do the work
    from ._span_rows import frame as _frame_native
    from ._span_rows import join as _join_native
except ImportError:  # pragma: no cover - a setup without a C compiler
    _frame_native = _join_native = None

__all__ = [
    "DEFAULT_MAX_ATTRIBUTE_BYTES", "END_TAG", "KIND_CLIENT", "KIND_INTERNAL", "KIND_SERVER",
    "MAX_UINT64", "PARENT_SPAN_ID_TAG", "RESOURCE_SPANS_TAG", "SCOPE_SPANS_TAG", "SPANS_TAG",
    "SPAN_FRAMES", "SPAN_ID_TAG", "START_TAG", "STATUS_ERROR", "TRACE_ID_TAG", "AttrValue",
    "KeyCache", "Part", "any_value", "clean", "cut_utf8", "encode_attribute", "encode_events",
    "frame_spans", "frame_spans_python", "join_rows", "join_rows_python", "utf8", "varint",
]

AttrValue = str | int | float | bool | tuple[str, ...]
# A string attribute value (and a span name) is cut to this many UTF-8 bytes, so one record
# with a 10 MB path does not make a 10 MB span that no backend accepts. Settings:
# max_attribute_bytes. 8 KiB holds real URLs, user agents and SQL statements whole.
DEFAULT_MAX_ATTRIBUTE_BYTES = 8192
MIN_INT64, MAX_INT64, MAX_UINT64 = -(2**63), 2**63 - 1, 2**64 - 1


def varint(n: int) -> bytes:
    """Protobuf base-128 varint (lengths of embedded messages)."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)




def _tag(message: object, **field: object) -> bytes:
    """The tag (+ length) prefix the stubs write for one field, from a sample value."""
    blob = message(**field).SerializeToString()  # type: ignore[operator]
    (value,) = field.values()
    size = len(value) if isinstance(value, bytes) else 8
    return blob[: len(blob) - size]


TRACE_ID_TAG = _tag(Span, trace_id=b"\x01" * 16)  # tag + length 16
SPAN_ID_TAG = _tag(Span, span_id=b"\x01" * 8)
PARENT_SPAN_ID_TAG = _tag(Span, parent_span_id=b"\x01" * 8)
START_TAG = _tag(Span, start_time_unix_nano=1 << 62)  # fixed64 tag
END_TAG = _tag(Span, end_time_unix_nano=1 << 62)
KIND_SERVER = Span(kind=Span.SpanKind.SPAN_KIND_SERVER).SerializeToString()
KIND_INTERNAL = Span(kind=Span.SpanKind.SPAN_KIND_INTERNAL).SerializeToString()
KIND_CLIENT = Span(kind=Span.SpanKind.SPAN_KIND_CLIENT).SerializeToString()
STATUS_ERROR = Span(status=Status(code=Status.StatusCode.STATUS_CODE_ERROR)).SerializeToString()
SPANS_TAG = ScopeSpans(spans=[Span()]).SerializeToString()[:-1]  # tag of ScopeSpans.spans
# A span's tag + length in ScopeSpans, for every 1- and 2-byte length (spans under 16 KiB).
SPAN_FRAMES = {n: SPANS_TAG + varint(n) for n in range(1 << 14)}
SCOPE_SPANS_TAG = ResourceSpans(scope_spans=[ScopeSpans()]).SerializeToString()[:-1]
RESOURCE_SPANS_TAG = ExportTraceServiceRequest(
    resource_spans=[ResourceSpans()]
).SerializeToString()[:-1]


# A part of a batch's spans (join_rows): the same bytes in every row; a list of each row's
# bytes; (width, ids): each cut or zero-padded to `width` bytes; (0, ints): each a fixed64.
Part = bytes | list[bytes] | tuple[int, list[Any]]
_FIXED64 = Struct("<Q").pack


def join_rows(n: int, parts: list[Part]) -> list[bytes]:
    """The n spans of a batch: row i's piece of every part, joined (one C pass where setup.py
    built audit_guard._span_rows; `join_rows_python` otherwise, which defines the result)."""
    if _join_native is not None:
        return _join_native(n, parts)  # type: ignore[no-any-return]
    return join_rows_python(n, parts)


def join_rows_python(n: int, parts: list[Part]) -> list[bytes]:
    columns: list[Any] = [repeat(b"", n)]  # n rows, whatever the parts
    for part in parts:
        if part.__class__ is bytes:
            columns.append(repeat(part, n))
        elif part.__class__ is tuple:
            width, values = part  # type: ignore[misc]
            columns.append(map(Struct(f"<{width}s").pack if width else _FIXED64, values))
        else:
            columns.append(part)
    return list(map(b"".join, zip(*columns, strict=True)))


def frame_spans(spans: list[bytes]) -> bytes:
    """The spans as ScopeSpans.spans fields (each its tag, length and bytes), concatenated."""
    if _frame_native is not None:
        return _frame_native(SPANS_TAG, spans)  # type: ignore[no-any-return]
    return frame_spans_python(spans)


def frame_spans_python(spans: list[bytes]) -> bytes:
    sizes = list(map(len, spans))
    try:  # every span under 16 KiB: its field tag and length by one C-level lookup pass
        frames = list(map(SPAN_FRAMES.__getitem__, sizes))
    except KeyError:  # some span of 16 KiB or more
        frames = [f if f is not None else SPANS_TAG + varint(n)
                  for f, n in zip(map(SPAN_FRAMES.get, sizes), sizes, strict=True)]
    return b"".join(chain.from_iterable(zip(frames, spans, strict=True)))


def utf8(value: str) -> bytes:
    """UTF-8 bytes of any str: a lone surrogate (not valid UTF-8) becomes "?", not an error."""
    return value.encode() if value.isascii() else value.encode("utf-8", "replace")


def clean(value: str) -> str:
    """`value` as a str protobuf accepts (no lone surrogates)."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode()


def cut_utf8(raw: bytes, limit: int) -> bytes:
    """At most `limit` bytes of UTF-8 `raw`, never ending inside a character."""
    if len(raw) <= limit:
        return raw
    while limit > 0 and raw[limit] & 0xC0 == 0x80:  # a continuation byte: back off
        limit -= 1
    return raw[:limit]


def any_value(value: AttrValue) -> AnyValue:
    """Never raises: an int beyond int64 is written as its decimal string (OTLP has no wider
    integer), a str with a lone surrogate with "?" in its place."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if MIN_INT64 <= value <= MAX_INT64:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, tuple):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=clean(str(value)))


# Wire tags: Span.attributes (9), KeyValue.key (1) / .value (2), AnyValue.string_value (1); all
# length-delimited. Checked against the stubs' encoding by tests/test_spans.py.
_ATTRIBUTE_TAG, _KEY_TAG, _VALUE_TAG, _STRING_TAG = b"\x4a", b"\x0a", b"\x12", b"\x0a"


def encode_attribute(key: str, value: AttrValue, max_bytes: int | None = None) -> bytes:
    """One attribute as the bytes of a Span holding only it (concatenable into any Span).

    A string value (the usual case, and the one whose values rarely repeat: paths, client
    addresses) is framed by hand, ~4x faster than building the message: each new value of a
    cached column is encoded once, so that cost is paid per distinct value. Others go through
    the stubs. A lone surrogate (not valid UTF-8) is written as "?", not an error. `max_bytes`:
    a longer string value is cut to that many bytes, on a character boundary.
    """
    if value.__class__ is str:
        raw = utf8(value)  # type: ignore[arg-type]
        if max_bytes is not None and len(raw) > max_bytes:
            raw = cut_utf8(raw, max_bytes)
        string_value = b"".join((_STRING_TAG, varint(len(raw)), raw))
        name = utf8(key)
        kv = b"".join((_KEY_TAG, varint(len(name)), name, _VALUE_TAG, varint(len(string_value)),
                       string_value))
        return b"".join((_ATTRIBUTE_TAG, varint(len(kv)), kv))
    return Span(attributes=[KeyValue(key=key, value=any_value(value))]).SerializeToString()


class KeyCache:
    """value → encoded attribute, for one attribute key; None (absent) → b"". Bounded.

    A string value longer than `max_bytes` is cut when it is encoded, and never cached (the
    cache would keep the whole value alive): `last_capped` lists the (row, size before the cut)
    of such values in the last `column`/`one` call, so the builder can mark their rows. It is
    None, and costs nothing, while no value is that long."""

    __slots__ = ("key", "values", "max", "max_bytes", "last_capped")

    def __init__(self, key: str, max_entries: int = 50_000,
                 max_bytes: int = DEFAULT_MAX_ATTRIBUTE_BYTES) -> None:
        self.key = key
        self.values: dict[AttrValue | None, bytes] = {None: b""}
        self.max = max_entries
        self.max_bytes = max_bytes
        self.last_capped: list[tuple[int, int]] | None = None

    def one(self, value: AttrValue | None) -> bytes:
        """The encoded attribute for one value (sparse rows)."""
        blob = self.values.get(value)
        if blob is not None:
            self.last_capped = None
            return blob
        return self.column([value])[0]

    def column(self, values: list[AttrValue | None]) -> list[bytes]:
        """Encoded attributes for a column of values (cache lookups are one C-level map)."""
        self.last_capped = None
        try:  # every value seen before (the usual case): [] is 30 % cheaper than .get()
            return list(map(self.values.__getitem__, values))
        except KeyError:
            pass
        out = list(map(self.values.get, values))
        if None in out:  # values not seen before
            if len(self.values) >= self.max:
                self.values.clear()
                self.values[None] = b""
            for i, blob in enumerate(out):
                if blob is None:
                    value = values[i]
                    blob = self.values.get(value)
                    if blob is None:
                        # len(str) * 4 bounds its UTF-8 size: only a long value is measured.
                        size = (len(utf8(value))  # type: ignore[arg-type]
                                if value.__class__ is str
                                and len(value) * 4 > self.max_bytes  # type: ignore[arg-type]
                                else 0)
                        blob = encode_attribute(self.key, value,  # type: ignore[arg-type]
                                                self.max_bytes)
                        if size > self.max_bytes:
                            if self.last_capped is None:
                                self.last_capped = []
                            self.last_capped.append((i, size))
                        else:
                            self.values[value] = blob
                    out[i] = blob
        return out


def encode_events(found: list[tuple[int, str, dict[str, str | int]]], max_bytes: int) -> bytes:
    """Span events (rare: error-log evidence), encoded by the stubs. A time a span cannot
    carry is left out (0); values are made safe as attributes are, and strings cut at
    `max_bytes` (the same text is a span attribute too, which carries the mark)."""
    def cut(value: str | int) -> str | int:
        if value.__class__ is str and len(value) * 4 > max_bytes:  # type: ignore[arg-type]
            return cut_utf8(utf8(value), max_bytes).decode()  # type: ignore[arg-type]
        return value

    return Span(events=[
        Span.Event(time_unix_nano=when if 0 <= when <= MAX_UINT64 else 0,
                   name=clean(cut(name)),  # type: ignore[arg-type]
                   attributes=[KeyValue(key=clean(k), value=any_value(cut(v)))
                               for k, v in sorted(attrs.items())])
        for when, name, attrs in found
    ]).SerializeToString()
