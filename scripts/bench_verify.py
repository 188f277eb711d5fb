#!/usr/bin/env python3
"""`audit-guard verify` benchmark (issue #14: 1,000,000 records in under a minute) — not a test.

Makes `--records` chained records (default 1,000,000) with the real pipeline, 2,000 per Export
line, a signed digest every 100 lines, as the collector's `file` exporter writes them (OTLP
JSON, one ExportTraceServiceRequest a line), then times `audit-guard verify --file` as an
operator runs it (a subprocess) and prints its peak RSS. Making the file takes minutes: with
`--keep DIR` it is made once into DIR and reused by the next runs.

    .venv/bin/python scripts/bench_verify.py [--records N] [--keep DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402

from tests.support.integrity_trail import Trail, access_line  # noqa: E402

BATCH = 2000
DIGEST_EVERY = 100  # Export lines


def _value(v: AnyValue) -> dict[str, Any]:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return {"stringValue": v.string_value}
    if kind == "int_value":
        return {"intValue": str(v.int_value)}
    if kind == "bool_value":
        return {"boolValue": v.bool_value}
    if kind == "double_value":
        return {"doubleValue": v.double_value}
    return {"arrayValue": {"values": [_value(x) for x in v.array_value.values]}}


def to_json(request: bytes) -> str:
    """OTLP JSON of our spans, by hand (json_format is ~10x slower at this size); the same
    shape as the file exporter's (hex ids, int64 as strings)."""
    out: dict[str, Any] = {"resourceSpans": []}
    for rs in ExportTraceServiceRequest.FromString(request).resource_spans:
        spans = []
        for ss in rs.scope_spans:
            for s in ss.spans:
                span: dict[str, Any] = {
                    "traceId": s.trace_id.hex(), "spanId": s.span_id.hex(), "name": s.name,
                    "kind": s.kind, "startTimeUnixNano": str(s.start_time_unix_nano),
                    "endTimeUnixNano": str(s.end_time_unix_nano),
                    "attributes": [{"key": kv.key, "value": _value(kv.value)}
                                   for kv in s.attributes]}
                if s.parent_span_id:
                    span["parentSpanId"] = s.parent_span_id.hex()
                if s.status.code:
                    span["status"] = {"code": s.status.code}
                if s.events:
                    raise SystemExit("bench records have no events")
                spans.append(span)
        out["resourceSpans"].append({
            "resource": {"attributes": [{"key": kv.key, "value": _value(kv.value)}
                                        for kv in rs.resource.attributes]},
            "scopeSpans": [{"scope": {"name": "audit-guard"}, "spans": spans}]})
    return json.dumps(out, separators=(",", ":"))


def make_file(workdir: Path, records: int) -> tuple[Path, Path]:
    """The trail file and its public-key directory (made when not there yet)."""
    path, keys = workdir / f"spans-{records}.json", workdir / f"state-{records}" / "keys"
    if path.exists() and keys.exists():
        return path, keys
    trail = Trail(workdir / f"state-{records}", instance_id="bench")
    partial = path.with_suffix(".partial")
    with partial.open("w") as f:
        for n in range(0, records, BATCH):
            bodies = [access_line(n + i) for i in range(min(BATCH, records - n))]
            f.write(to_json(trail.export(bodies, first_offset=n * 1000)) + "\n")
            trail.lines.clear()
            if (n // BATCH) % DIGEST_EVERY == DIGEST_EVERY - 1 or n + BATCH >= records:
                trail.digest(now_ns=1_764_165_600_000_000_000 + n)
                f.write(trail.lines.pop() + "\n")
    partial.rename(path)
    return path, keys


def time_verify(path: Path, keys: Path) -> tuple[float, float, dict[str, Any], int]:
    """Wall seconds, peak RSS (MB) of the verify process, its report and exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "audit_guard.cli", "verify", "--file",
                          str(path), "--public-key", str(keys)], capture_output=True, text=True,
                         cwd=ROOT / "processor")
    took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children
    if run.returncode == 2:
        raise SystemExit(f"verify failed: {run.stderr}")
    return took, max(peak, before) / 1024, json.loads(run.stdout), run.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="make the file here once and reuse it")
    parser.add_argument("--runs", type=int, default=1, help="verify runs (best is printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        path, keys = make_file(workdir, args.records)
        print(f"file {path} ({path.stat().st_size / 1e6:.0f} MB) ready in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        for _ in range(args.runs):
            took, rss, report, code = time_verify(path, keys)
            print(f"verify {report['records']:,} records, {report['digests']} digests: "
                  f"{took:.1f} s, peak RSS {rss:.0f} MB (exit {code}, "
                  f"intact={report['intact']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
