"""The chain's canonical encoding: pinned vectors, the hand-built chain attributes against the
stubs, and the content rebuilt from a span read back equal to the bytes the producer hashed."""

from __future__ import annotations

from hashlib import sha256

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from audit_guard.integrity.encoding import (
    CHAIN_HASH,
    CHAIN_ID,
    CHAIN_SEQ,
    ChainAttributes,
    builder_rank,
    genesis,
    link,
    span_content,
)
from audit_guard.record import RecordBatch
from audit_guard.spans import SpanBuilder


def test_pinned_vectors() -> None:
    # Changing these breaks the verification of every chain already exported: the encoding is
    # a contract (docs/integrity.md), so the values are written out.
    g = genesis("inst1/nginx")
    assert g.hex() == "c2afa4e3ca5105b74b9d7e4f0bf07308fba6b8bfbbf25b14a8a266124347d859"
    assert link(g, 1, sha256(b"span").digest()).hex() == (
        "67b73fe43e6c3d425f5e0301d3b80f528afa0bf7903b64713af9df77087cd0dc")
    assert link(g, 2, sha256(b"span").digest()) != link(g, 1, sha256(b"span").digest())
    assert genesis("inst1/app") != g


def test_chain_attributes_match_the_stubs() -> None:
    attrs = ChainAttributes("inst1/nginx")
    for seq in (1, 127, 128, 300, 2**40):
        digest = sha256(str(seq).encode()).digest()
        want = Span(attributes=[
            KeyValue(key=CHAIN_ID, value=AnyValue(string_value="inst1/nginx")),
            KeyValue(key=CHAIN_SEQ, value=AnyValue(int_value=seq)),
            KeyValue(key=CHAIN_HASH, value=AnyValue(string_value=digest.hex())),
        ]).SerializeToString()
        assert attrs(seq, digest) == want


def _varied_batch() -> RecordBatch:
    n = 6
    batch = RecordBatch(
        "nginx", n,
        time_unix_nano=[1_764_165_600_000_000_000 + i for i in range(n)],
        duration_ns=[0, 5, 10**9, 0, 7, 2 * 10**18],  # the last: start clamped to 0
        method=["GET", None, "POST", "DELETE", "GET", "PUT"],
        path=["/v1/a", "/v1/" + "x" * 600, None, "/v1/ü", "/p", "/q"],
        route=[None, None, "/v1/r", None, None, None],
        status=[200, 503, None, 404, 200, 500],
        user_id=["u1", None, "ü", "u2", "u3", "u4"],
        trace_id=[bytes([i + 1]) * 16 for i in range(n)],
        span_id=[bytes([i + 1]) * 8 for i in range(n)],
        parent_span_id=[b"", b"\x09" * 8, b"", b"", b"", b""],
        attributes=[None, {"db.system.name": "postgresql", "x.count": 3}, None, None,
                    {"x.ratio": 0.5}, None],
        events=[None, [(1_764_165_600_000_000_001, "nginx.error",
                        {"message": "upstream prematurely closed", "level": 3})],
                None, None, None, None],
        trace_id_generated=[False, True, False, False, False, False],
    )
    batch.add_flag(0, "duplicate")
    batch.add_flag(3, "rule:deleted_dataset")
    batch.violations[2] = ["missing_field:user_id"]
    batch.truncation_reasons[1] = ["status_5xx", "bytes"]
    return batch


def test_content_rebuilt_from_a_span_is_what_the_producer_hashed() -> None:
    # Every kind of field the builder writes: parent ids, events, error status, arrays,
    # ints, doubles, cut values (max_attribute_bytes=256), a start clamped to 0.
    built = SpanBuilder(max_attribute_bytes=256).spans(_varied_batch(), now_ns=42)
    for blob in built:
        assert span_content(Span.FromString(blob)) == blob


def test_content_ignores_chain_and_backend_attributes() -> None:
    blob = SpanBuilder().spans(_varied_batch(), now_ns=42)[0]
    span = Span.FromString(blob + ChainAttributes("i/nginx")(1, b"\x00" * 32))
    span.attributes.add(key="otel.scope.name").value.string_value = "audit-guard"
    assert span_content(span) == blob
    span.attributes[0].value.string_value = "tampered"
    assert span_content(span) != blob


def test_the_builder_writes_attributes_in_builder_order() -> None:
    # Backends may sort attributes (Jaeger does); the verifier restores this order.
    for blob in SpanBuilder(max_attribute_bytes=256).spans(_varied_batch(), now_ns=42):
        keys = [kv.key for kv in Span.FromString(blob).attributes]
        assert keys == sorted(keys, key=builder_rank), keys
        assert len(keys) == len(set(keys))


def test_content_is_the_same_whatever_order_a_backend_returns() -> None:
    blob = SpanBuilder().spans(_varied_batch(), now_ns=42)[1]  # with events and extras
    span = Span.FromString(blob)
    shuffled = Span()
    shuffled.CopyFrom(span)
    del shuffled.attributes[:]
    shuffled.attributes.extend(sorted(span.attributes, key=lambda kv: kv.key))
    for event in shuffled.events:
        event.attributes.sort(key=lambda kv: kv.key, reverse=True)
    assert span_content(shuffled) == blob
