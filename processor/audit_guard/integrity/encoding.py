"""The chain's canonical encoding: what a link hashes, and the chain attributes' wire bytes.

A record's chain hash covers the span as audit-guard built it, less the three chain attributes:

    hash(seq) = SHA-256( hash(seq-1) ‖ seq as 8 bytes big-endian ‖ SHA-256(content) )
    hash(0)   = SHA-256( "audit-guard/chain/v1\\n" ‖ chain id )           (the genesis)

`content` is the span's protobuf encoding as the processor writes it, field by field:
trace id + span id, parent span id (when set), name, kind + start + end (always written, as
fixed64, even when 0), then `Span{attributes, events, status}` as the official stubs serialize
it, attributes in the builder's order (BUILDER_ORDER: a backend may sort them) and each
event's attributes by key. That is the span builder's output byte for byte (tests/unit/
integrity check it over every kind of record), so the producer hashes the bytes it already
has (two SHA-256, ~1 µs a record) and a verifier rebuilds them from any faithful copy of the
span (OTLP protobuf or OTLP JSON). Hashing the content first lets a verifier keep 32 bytes a
record, not the record, until it has every link's predecessor. Resource and scope are not
covered: the record says its source in `audit.source`, which is.

Attributes a trace backend adds on its way out (Jaeger's `otel.scope.name`, `span.kind`, …)
and `@jaeger@*` are not the processor's and are left out by the verifier (BACKEND_KEYS); the
processor never writes those keys.
"""

from __future__ import annotations

from hashlib import sha256
from struct import Struct

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ..span_encoding import END_TAG, START_TAG, encode_attribute, varint

__all__ = [
    "BACKEND_KEYS", "BUILDER_ORDER", "CHAIN_HASH", "CHAIN_ID", "CHAIN_KEYS", "CHAIN_SEQ",
    "ChainAttributes",
    "builder_rank", "content_digest", "genesis", "link", "span_content",
]

CHAIN_ID = "audit.chain.id"
CHAIN_SEQ = "audit.chain.seq"
CHAIN_HASH = "audit.chain.hash"
CHAIN_KEYS = frozenset({CHAIN_ID, CHAIN_SEQ, CHAIN_HASH})
# Keys trace backends add to the spans they return (never written by audit-guard).
BACKEND_KEYS = frozenset({
    "otel.scope.name", "otel.scope.version", "otel.status_code", "otel.status_description",
    "span.kind", "error", "internal.span.format", "w3c.tracestate", "otel.library.name",
    "otel.library.version",
})
# The order the span builder writes attributes in (audit_guard.spans): its columns, a record's
# source attributes sorted by key where "*" stands. Backends may return attributes in another
# order (Jaeger sorts them), so the content is rebuilt in this one; tests/unit/integrity checks
# it against the builder's output.
BUILDER_ORDER = (
    "audit.source", "http.request.method", "url.path", "http.route",
    "http.response.status_code", "client.address", "server.address", "user_agent.original",
    "user.id", "app.id", "http.response.body.size", "*", "audit.ingest_lag_ms",
    "audit.attribute_truncated", "audit.attribute_original_bytes", "error.type", "audit.valid",
    "audit.violations", "audit.truncated", "audit.truncation.reason", "audit.flags",
    "audit.rules", "audit.trace_id.generated",
)
_RANK = {key: (i, "") for i, key in enumerate(BUILDER_ORDER)}
_SOURCE_RANK = BUILDER_ORDER.index("*")


def builder_rank(key: str) -> tuple[int, str]:
    return _RANK.get(key) or (_SOURCE_RANK, key)


_GENESIS_PREFIX = b"audit-guard/chain/v1\n"
_SEQ = Struct(">Q").pack
_KIND_BYTES = {k: Span(kind=k).SerializeToString() for k in range(1, 6)}


def genesis(chain_id: str) -> bytes:
    """hash(0) of a chain: binds every link to the chain's id."""
    return sha256(_GENESIS_PREFIX + chain_id.encode()).digest()


def link(prev: bytes, seq: int, content_digest: bytes) -> bytes:
    """hash(seq) from hash(seq-1) and SHA-256 of the record's content."""
    return sha256(b"".join((prev, _SEQ(seq), content_digest))).digest()


def content_digest(content: bytes) -> bytes:
    return sha256(content).digest()


def span_content(span: Span) -> bytes:
    """The bytes the chain hashes for a span read back (chain and backend attributes left out);
    see the module docstring."""
    head = [Span(trace_id=span.trace_id, span_id=span.span_id,
                 parent_span_id=span.parent_span_id, name=span.name).SerializeToString()]
    kind = _KIND_BYTES.get(span.kind) or Span(kind=span.kind).SerializeToString()
    head.append(b"".join((kind, START_TAG, _fixed64(span.start_time_unix_nano), END_TAG,
                          _fixed64(span.end_time_unix_nano))))
    attrs = sorted((kv for kv in span.attributes if kv.key not in CHAIN_KEYS
                    and kv.key not in BACKEND_KEYS and not kv.key.startswith("@jaeger@")),
                   key=lambda kv: builder_rank(kv.key))
    events = [Span.Event(time_unix_nano=e.time_unix_nano, name=e.name,
                         attributes=sorted(e.attributes, key=lambda kv: kv.key))
              for e in span.events]
    rest = Span(attributes=attrs, events=events)
    if span.status.code or span.status.message:
        rest.status.CopyFrom(span.status)
    head.append(rest.SerializeToString())
    return b"".join(head)


def _fixed64(value: int) -> bytes:
    return value.to_bytes(8, "little")


class ChainAttributes:
    """The three chain attributes of a record as span bytes, built by hand: the id's bytes are
    cached per chain, the hash's prefix is fixed (a 64-character hex string), only the seq's
    varint varies. Checked against the stubs by the tests."""

    def __init__(self, chain_id: str) -> None:
        self.id_bytes = encode_attribute(CHAIN_ID, chain_id)
        sample = encode_attribute(CHAIN_HASH, "0" * 64)
        self.hash_prefix = sample[:-64]
        key = CHAIN_SEQ.encode()
        self.seq_key = b"\x0a" + varint(len(key)) + key + b"\x12"

    def seq(self, seq: int) -> bytes:
        if seq < 0x4000:  # one or two varint bytes: every seq of a chain's first 16384
            value = (b"\x18" + bytes((seq,)) if seq < 0x80
                     else b"\x18" + bytes(((seq & 0x7F) | 0x80, seq >> 7)))
        else:
            value = b"\x18" + varint(seq)  # AnyValue.int_value (field 3, varint)
        kv = self.seq_key + bytes((len(value),)) + value
        return b"\x4a" + bytes((len(kv),)) + kv  # both under 128 bytes: one length byte

    def __call__(self, seq: int, digest: bytes) -> bytes:
        return b"".join((self.id_bytes, self.seq(seq), self.hash_prefix,
                         digest.hex().encode()))
