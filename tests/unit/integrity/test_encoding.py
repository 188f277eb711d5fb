"""The chain's canonical encoding: pinned vectors, the hand-built chain attributes against the
stubs, the content rebuilt from a span read back equal to the bytes the producer hashed, and
the JSON reader `verify` runs giving the reference's bytes (span_content) in every shape."""

from __future__ import annotations

import base64
from hashlib import sha256
from typing import Any

import msgspec
import orjson
import pytest
from google.protobuf.json_format import MessageToDict, ParseDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from audit_guard.config import Settings
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
from audit_guard.integrity.otlp_json import Span as JsonSpan
from audit_guard.integrity.readers import SpanReader, span_hex, trace_hex
from audit_guard.pipeline import Pipeline
from audit_guard.record import RecordBatch
from audit_guard.spans import SpanBuilder
from tests.support.integrity_trail import access_line, logs_request


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


# --- The JSON reader (what `verify` runs) against the reference (span_content) --------------

def _json_span(blob: bytes, shape: str) -> dict[str, Any]:
    """A built span as each reader meets it in OTLP JSON: the collector's file exporter (hex
    ids, enums as numbers), Tempo (base64 ids, enum names, an empty status written), Jaeger
    (hex ids, attributes sorted by key, its own attributes added)."""
    span = Span.FromString(blob + ChainAttributes("i/nginx")(7, b"\x01" * 32))
    raw = MessageToDict(span, use_integers_for_enums=shape != "tempo")
    if shape == "tempo":
        raw.setdefault("status", {})
        return raw
    for key in ("traceId", "spanId", "parentSpanId"):
        if key in raw:
            raw[key] = base64.b64decode(raw[key]).hex()
    if shape == "jaeger":
        raw["attributes"] = sorted(
            [*raw["attributes"], {"key": "otel.scope.name", "value": {"stringValue": "ag"}},
             {"key": "span.kind", "value": {"stringValue": "server"}}], key=lambda a: a["key"])
    return raw


def _all_kinds_of_span() -> list[bytes]:
    """Every kind of span the builder makes: the varied batch (parent ids, events, error
    status, arrays, ints, doubles, bools, cut values, a start clamped to 0) and records of
    the real pipeline (nginx access lines through Pipeline with the chain stage)."""
    varied = SpanBuilder(max_attribute_bytes=256).spans(_varied_batch(), now_ns=42)
    pipeline = Pipeline(Settings())
    request = logs_request([access_line(i) for i in range(12)])
    out, _ = pipeline.process_logs(request, now_ns=42)
    built = [s.SerializeToString() for rs in ExportTraceServiceRequest.FromString(out)
             .resource_spans for ss in rs.scope_spans for s in ss.spans]
    return varied + built


@pytest.mark.parametrize("shape", ["collector_file", "tempo", "jaeger"])
def test_the_json_reader_gives_the_reference_bytes(shape: str) -> None:
    reader = SpanReader()
    for blob in _all_kinds_of_span():
        want = span_content(Span.FromString(blob))
        assert want == blob
        raw = msgspec.convert(_json_span(blob, shape), JsonSpan, strict=False)
        content, attrs, ids = reader.content(raw)
        assert content == want, (shape, raw)
        assert (trace_hex(ids), span_hex(ids)) == (Span.FromString(blob).trace_id.hex(),
                                       Span.FromString(blob).span_id.hex())
        assert attrs[CHAIN_SEQ] == 7


def test_the_json_reader_sees_every_change() -> None:
    # The same edits through both paths: each changes the content (never hidden by a cache).
    reader = SpanReader()
    blob = SpanBuilder(max_attribute_bytes=256).spans(_varied_batch(), now_ns=42)[1]
    base = _json_span(blob, "collector_file")
    assert reader.content(msgspec.convert(base, JsonSpan, strict=False))[0] == blob  # cached
    assert any("boolValue" in kv["value"] for kv in base["attributes"])
    edits: list[Any] = [
        lambda s: s.__setitem__("name", s["name"] + "x"),
        lambda s: s.__setitem__("endTimeUnixNano", str(int(s["endTimeUnixNano"]) + 1)),
        lambda s: s["attributes"][0]["value"].__setitem__("stringValue", "tampered"),
        # a bool made an int of the same truth (True == 1 to a dict: another value on the wire)
        lambda s: [kv.__setitem__("value", {"intValue": str(int(kv["value"]["boolValue"]))})
                   for kv in s["attributes"] if "boolValue" in kv["value"]],
        lambda s: s["attributes"].insert(0, dict(s["attributes"][0])),  # a key twice
        lambda s: s["events"][0]["attributes"].pop(),
        lambda s: s.__setitem__("status", {}),
    ]
    for edit in edits:
        raw = orjson.loads(orjson.dumps(base))
        edit(raw)
        content = reader.content(msgspec.convert(raw, JsonSpan, strict=False))[0]
        assert content != blob, raw
        pb = Span()
        ParseDict({**raw, **{k: base64.b64encode(bytes.fromhex(raw[k])).decode()
                             for k in ("traceId", "spanId", "parentSpanId") if k in raw}}, pb)
        assert content == span_content(pb)
