"""Signed digests: every `integrity.digest_interval_s` and at shutdown, one span that signs the
chain heads, the seq range and record count of each chain in the window, the window's
completeness counts (records seen, reported missing, late), and the previous digest's hash.

The payload is compact JSON with sorted keys (orjson), carried whole in `audit.digest.payload`
and signed with Ed25519 (`audit.digest.signature`, hex, under `audit.digest.key_id`); its
SHA-256 is `audit.digest.hash` and the next digest's `prev`. Digests of one instance form their
own chain (`seq` 1, 2, …, `prev` of the first: SHA-256 of "audit-guard/digest/v1\\n" +
instance id). A digest is committed (state file) only once downstream took its span; a failed
one is built again, over a longer window, at the next tick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ..spans import SpanBatch
from .chain import ChainHead
from .keys import SigningKey

__all__ = ["DIGEST_SPAN_NAME", "DigestState", "DigestWriter", "digest_genesis"]

DIGEST_SPAN_NAME = "audit.digest"
STATE_FILE = "digest-state.json"
COMPLETENESS_METRICS = {"records": "audit_records_total",
                        "missing": "audit_records_missing_total",
                        "late": "audit_records_late_total"}


def digest_genesis(instance: str) -> bytes:
    return sha256(b"audit-guard/digest/v1\n" + instance.encode()).digest()


@dataclass
class DigestState:
    seq: int = 0  # the last committed digest
    prev: bytes = b""  # its hash
    window_start_ns: int = 0
    covered: dict[str, int] = field(default_factory=dict)  # chain id → last seq signed
    totals: dict[str, float] = field(default_factory=dict)  # completeness totals at the last


@dataclass(frozen=True)
class BuiltDigest:
    payload: bytes
    request: bytes  # the ExportTraceServiceRequest with the digest span
    state: DigestState  # the state once it is committed


class DigestWriter:
    def __init__(self, key: SigningKey, instance: str, state_dir: Path | None,
                 service_name: str = "audit-guard") -> None:
        self.key = key
        self.instance = instance
        self._path = state_dir / STATE_FILE if state_dir is not None else None
        self._service = service_name
        self.state = self._load()

    def _load(self) -> DigestState:
        if self._path is None or not self._path.exists():
            return DigestState(prev=digest_genesis(self.instance))
        raw = orjson.loads(self._path.read_bytes())
        return DigestState(raw["seq"], bytes.fromhex(raw["prev"]), raw["window_start_ns"],
                           dict(raw["covered"]))

    def build(self, heads: dict[str, ChainHead], totals: dict[str, float], now_ns: int,
              final: bool = False) -> BuiltDigest:
        """The next digest over the committed heads; nothing changes until `commit`."""
        st = self.state
        chains: dict[str, Any] = {}
        for chain_id, head in sorted(heads.items()):
            before = st.covered.get(chain_id, 0)
            chains[chain_id] = {"first_seq": before + 1 if head.seq > before else None,
                                "last_seq": head.seq, "count": head.seq - before,
                                "head": head.hash.hex()}
        completeness = {name: int(totals.get(metric, 0) - st.totals.get(metric, 0))
                        for name, metric in COMPLETENESS_METRICS.items()}
        start = st.window_start_ns or now_ns
        payload = orjson.dumps({
            "v": 1, "instance": self.instance, "seq": st.seq + 1, "prev": st.prev.hex(),
            "window_start_ns": start, "window_end_ns": now_ns, "final": final,
            "key_id": self.key.key_id, "chains": chains, "completeness": completeness,
        }, option=orjson.OPT_SORT_KEYS)
        digest = sha256(payload).digest()
        new = DigestState(st.seq + 1, digest, now_ns,
                          {c: h.seq for c, h in heads.items()},
                          {m: totals.get(m, 0) for m in COMPLETENESS_METRICS.values()})
        return BuiltDigest(payload, self._request(payload, digest, st.seq + 1, start, now_ns),
                           new)

    def _request(self, payload: bytes, digest: bytes, seq: int, start: int, end: int) -> bytes:
        ids = sha256(b"audit-guard/digest-span\n%s\n%d" % (self.instance.encode(), seq)).digest()
        attrs = {
            "audit.source": "integrity",
            "audit.digest.instance": self.instance,
            "audit.digest.seq": seq,
            "audit.digest.hash": digest.hex(),
            "audit.digest.key_id": self.key.key_id,
            "audit.digest.signature": self.key.sign(payload).hex(),
            "audit.digest.payload": payload.decode(),
        }
        span = Span(trace_id=ids[:16], span_id=ids[16:24], name=DIGEST_SPAN_NAME,
                    kind=Span.SpanKind.SPAN_KIND_INTERNAL, start_time_unix_nano=start,
                    end_time_unix_nano=end,
                    attributes=[KeyValue(key=k, value=_value(v)) for k, v in attrs.items()])
        batch = SpanBatch(self._service)
        batch.spans = [span.SerializeToString()]
        return batch.request_bytes()

    def commit(self, built: BuiltDigest) -> None:
        if self._path is not None:
            st = built.state
            blob = orjson.dumps({"seq": st.seq, "prev": st.prev.hex(),
                                 "window_start_ns": st.window_start_ns, "covered": st.covered})
            tmp = self._path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        self.state = built.state


def _value(value: str | int) -> AnyValue:
    return AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
