"""Splitting a serialized ExportTraceServiceRequest into requests under a size limit.

gRPC servers refuse a message over their receive limit (4 MiB by default in the collector's OTLP
receiver, Jaeger and Tempo) with RESOURCE_EXHAUSTED; a backlog batch of 8,192 records with long
user agents makes ~6 MB of spans. The exporter therefore sends requests of at most
`exporter.max_request_bytes`, cut between spans: each piece keeps its spans' resource and scope.

Works on the wire format (only tags and lengths are read, spans are copied as bytes), so a
request under the limit costs nothing and one over it costs a walk over its fields, not a parse.

    ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
    ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; schema_url = 3 }
    ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; schema_url = 3 }
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["count_spans", "split_request"]

_LEN = 2  # wire type: length-delimited
_RESOURCE_SPANS = 1
_SCOPE_SPANS = 2
_SPANS = 2
# A length prefix is at most 10 bytes; a tag of these fields is 1 byte.
_FRAME = 11


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(field number, the whole field as written — tag to end —, its payload if
    length-delimited else b"") for each top-level field of a message."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("length-delimited field runs past the message end")
            body = buf[pos:pos + size]
            pos += size
            yield number, buf[start:pos], body
            continue
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("field runs past the message end")
        yield number, buf[start:pos], b""


def _frame(number: int, body: bytes) -> bytes:
    return bytes([(number << 3) | _LEN]) + _encode_varint(len(body)) + body


def count_spans(payload: bytes) -> int:
    """Spans in a serialized ExportTraceServiceRequest."""
    n = 0
    for number, _, rs in _fields(payload):
        if number != _RESOURCE_SPANS:
            continue
        for rs_number, _, ss in _fields(rs):
            if rs_number == _SCOPE_SPANS:
                n += sum(1 for s_number, _, _ in _fields(ss) if s_number == _SPANS)
    return n


class _Builder:
    """Requests being filled: spans are added under their (resource, scope) heads."""

    def __init__(self, max_bytes: int) -> None:
        self.max = max_bytes
        self.done: list[tuple[bytes, int]] = []
        self._resources: list[tuple[bytes, list[tuple[bytes, list[bytes]]]]] = []
        self._size = 0
        self._spans = 0

    def add(self, resource_head: bytes, scope_head: bytes, span: bytes) -> None:
        cost = len(span)
        new_resource = not self._resources or self._resources[-1][0] is not resource_head
        new_scope = new_resource or self._resources[-1][1][-1][0] is not scope_head
        if new_resource:
            cost += len(resource_head) + _FRAME
        if new_scope:
            cost += len(scope_head) + _FRAME
        if self._spans and self._size + cost > self.max:
            self.flush()
            new_resource = new_scope = True
            cost = len(span) + len(resource_head) + len(scope_head) + 2 * _FRAME
        if new_resource:
            self._resources.append((resource_head, []))
        if new_scope:
            self._resources[-1][1].append((scope_head, []))
        self._resources[-1][1][-1][1].append(span)
        self._size += cost
        self._spans += 1

    def flush(self) -> None:
        if not self._spans:
            return
        parts = []
        for resource_head, scopes in self._resources:
            rs = resource_head + b"".join(
                _frame(_SCOPE_SPANS, scope_head + b"".join(spans)) for scope_head, spans in scopes
            )
            parts.append(_frame(_RESOURCE_SPANS, rs))
        self.done.append((b"".join(parts), self._spans))
        self._resources, self._size, self._spans = [], 0, 0


def split_request(payload: bytes, max_bytes: int, span_count: int | None = None
                  ) -> list[tuple[bytes, int]]:
    """[(request bytes, spans in it)], each request at most `max_bytes` long unless one span
    alone is larger (it is then sent by itself: downstream decides). A request under the
    limit is returned as it is."""
    if len(payload) <= max_bytes:
        return [(payload, count_spans(payload) if span_count is None else span_count)]
    builder = _Builder(max_bytes)
    for number, _, rs in _fields(payload):
        if number != _RESOURCE_SPANS:
            continue
        resource_head = b"".join(f for n, f, _ in _fields(rs) if n != _SCOPE_SPANS)
        for rs_number, _, ss in _fields(rs):
            if rs_number != _SCOPE_SPANS:
                continue
            scope_head = b"".join(f for n, f, _ in _fields(ss) if n != _SPANS)
            for s_number, span, _ in _fields(ss):
                if s_number == _SPANS:
                    builder.add(resource_head, scope_head, span)
    builder.flush()
    return builder.done
