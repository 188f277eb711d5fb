"""A chained audit trail made by the real pipeline, for the integrity tests: nginx access lines
(and app lines) through `Pipeline` with a `ChainStage`, digests by `DigestWriter`, written as
OTLP JSON lines the way the collector's `file` exporter writes them (hex ids, camelCase), and
small tamper helpers that edit such a file as an attacker with write access would."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import Settings
from audit_guard.integrity.chain import ChainStage
from audit_guard.integrity.digest import DigestWriter
from audit_guard.integrity.encoding import content_digest, link
from audit_guard.integrity.keys import SigningKey
from audit_guard.pipeline import Pipeline

BASE_MSEC = 1_764_165_600.0


def access_line(i: int, **over: Any) -> str:
    line = {
        "msec": f"{BASE_MSEC + i:.3f}", "request_time": "0.010",
        "request_id": f"{i + 1:032x}", "remote_addr": "10.0.0.1", "host": "api.local",
        "http_user_agent": "ua/1", "request_method": "POST" if i % 3 else "GET",
        "request_uri": f"/v1/datasets/ds{i % 7}/documents", "status": "503" if i % 11 == 5
        else "200", "user_id": f"u{i % 5}", "app_id": "a1", "body_bytes_sent": "10",
        "request_completion": "OK",
    }
    line.update(over)
    return orjson.dumps(line).decode()


def logs_request(bodies: list[str], first_offset: int = 0) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    scope = req.resource_logs.add().scope_logs.add()
    offset = first_offset
    for body in bodies:
        record = scope.log_records.add()
        record.body.string_value = body
        record.attributes.add(key="log.file.name").value.string_value = "access.log"
        record.attributes.add(key="log.file.record_offset").value.int_value = offset
        offset += len(body) + 1
    return req


def otlp_json_line(request_bytes: bytes) -> str:
    """An ExportTraceServiceRequest as one OTLP JSON line (ids hex, as OTLP JSON wants)."""
    msg = MessageToDict(ExportTraceServiceRequest.FromString(request_bytes))
    for rs in msg.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(msg, separators=(",", ":"))


class Trail:
    """A processor instance's integrity parts around a real pipeline."""

    def __init__(self, state_dir: Path, key: SigningKey | None = None,
                 instance_id: str = "inst1") -> None:
        self.pipeline = Pipeline(Settings(),
                                 chain=ChainStage(state_dir, instance_id=instance_id))
        self.key = key or SigningKey.from_file(state_dir / "key.pem", state_dir / "keys")
        self.digests = DigestWriter(self.key, self.pipeline.chain.instance_id, state_dir)
        self.lines: list[str] = []

    def export(self, bodies: list[str], first_offset: int = 0) -> bytes:
        out, _ = self.pipeline.process_logs(logs_request(bodies, first_offset), now_ns=42)
        self.lines.append(otlp_json_line(out))
        return out

    def digest(self, now_ns: int, totals: dict[str, float] | None = None) -> None:
        built = self.digests.build(self.pipeline.chain.heads, totals or {}, now_ns)
        self.digests.commit(built)
        self.lines.append(otlp_json_line(built.request))

    def write(self, path: Path) -> Path:
        path.write_text("".join(line + "\n" for line in self.lines))
        return path


def edit_spans(path: Path, edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """Rewrite an OTLP JSON file with `edit` applied to the flat list of its span dicts (edits
    in place; removing a span: set its dict's "_drop" key; spans appended to the list are
    inserted into the last request)."""
    requests = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    spans = [s for r in requests for rs in r["resourceSpans"] for ss in rs["scopeSpans"]
             for s in ss["spans"]]
    known = {id(s) for s in spans}
    edit(spans)
    added = [s for s in spans if id(s) not in known]  # inserted: into the last request
    requests[-1]["resourceSpans"][0]["scopeSpans"][0]["spans"] += added
    for r in requests:
        for rs in r["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                ss["spans"] = [s for s in ss["spans"] if not s.get("_drop")]
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))


def attr(span: dict[str, Any], key: str) -> Any:
    for kv in span.get("attributes", []):
        if kv["key"] == key:
            return next(iter(kv["value"].values()))
    return None


def set_attr(span: dict[str, Any], key: str, value: dict[str, Any]) -> None:
    for kv in span["attributes"]:
        if kv["key"] == key:
            kv["value"] = value
            return
    span["attributes"].append({"key": key, "value": value})


def chained(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chained record spans, in seq order."""
    found = [s for s in spans if attr(s, "audit.chain.seq") is not None]
    return sorted(found, key=lambda s: (attr(s, "audit.chain.id"),
                                        int(attr(s, "audit.chain.seq"))))


def reference_links(prev: bytes, first: int, contents: list[bytes]) -> list[bytes]:
    """The chain's links as the encoding defines them (encoding.link over SHA-256 of each
    content, seqs from `first` after `prev`), one hashlib call at a time: what the chain
    stage's column-at-a-time and C paths are checked against."""
    out = []
    for seq, content in enumerate(contents, first):
        prev = link(prev, seq, content_digest(content))
        out.append(prev)
    return out
