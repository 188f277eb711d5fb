#!/usr/bin/env python3
"""Integrity benchmark (issue #14) — not a test.

1. The chain's cost on the hot path: the same nginx records through `Pipeline.process_logs`
   with and without the chain stage, alternating, best of N rounds each (µs a record), and the
   chain stage alone over ready-made spans. In CPU time of this thread (`time.thread_time`), as
   `make bench` counts CPU seconds: on a shared machine wall time mostly measures the others.
2. `verify` over a file of OTLP JSON: `--records` chained records (default 1,000,000) made by
   the real pipeline, 2,000 per Export line, a signed digest every 100 lines; the figure is the
   wall time of `audit-guard verify --file` (a subprocess, as an operator runs it).

    .venv/bin/python scripts/bench_integrity.py [--records N] [--rounds N] [--skip-verify]
"""

from __future__ import annotations

import argparse
import json
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

from audit_guard.config import Settings  # noqa: E402
from audit_guard.integrity.chain import ChainStage  # noqa: E402
from audit_guard.pipeline import Pipeline  # noqa: E402
from audit_guard.record import RecordBatch  # noqa: E402
from tests.support.integrity_trail import Trail, access_line, logs_request  # noqa: E402

BATCH = 2000


def hot_path(rounds: int) -> tuple[float, float, float]:
    plain = Pipeline(Settings())
    chained = Pipeline(Settings(), chain=ChainStage(None, instance_id="bench"))
    best = {id(plain): 1e9, id(chained): 1e9}
    first = 0
    for _ in range(rounds):
        for p in (plain, chained):
            # New records every time (no re-sends, no duplicates), made before the clock runs.
            request = logs_request([access_line(first + i) for i in range(BATCH)], first * 300)
            first += BATCH
            started = time.thread_time()
            p.process_logs(request, 42)
            best[id(p)] = min(best[id(p)], time.thread_time() - started)
    bodies = [access_line(i) for i in range(BATCH)]
    stage = ChainStage(None, instance_id="bench")
    batch = RecordBatch("nginx", BATCH, trace_id=[i.to_bytes(16, "big") for i in range(BATCH)],
                        span_id=[i.to_bytes(8, "big") for i in range(BATCH)])
    spans = plain.span_builder.spans(plain.check(plain.parse("nginx", list(bodies))), 42)
    alone = 1e9
    for _ in range(rounds):
        started = time.thread_time()
        stage(batch, spans)
        stage.commit()
        alone = min(alone, time.thread_time() - started)
    return (best[id(plain)] / BATCH * 1e6, best[id(chained)] / BATCH * 1e6,
            alone / BATCH * 1e6)


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
    """OTLP JSON of our spans, by hand (json_format is ~10x slower at this size)."""
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
    trail = Trail(workdir / "state", instance_id="bench")
    path = workdir / "spans.json"
    with path.open("w") as f:
        for n in range(0, records, BATCH):
            bodies = [access_line(n + i) for i in range(min(BATCH, records - n))]
            f.write(to_json(trail.export(bodies, first_offset=n * 1000)) + "\n")
            trail.lines.clear()
            if (n // BATCH) % 100 == 99 or n + BATCH >= records:
                trail.digest(now_ns=1_764_165_600_000_000_000 + n)
                f.write(trail.lines.pop() + "\n")
    return path, workdir / "state" / "keys"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-verify", action="store_true",
                        help="only the hot-path part (seconds, not minutes)")
    args = parser.parse_args()
    plain, chained, alone = hot_path(args.rounds)
    print(f"pipeline without chain   {plain:6.2f} µs/record")
    print(f"pipeline with chain      {chained:6.2f} µs/record  (+{chained - plain:.2f})")
    print(f"chain stage alone        {alone:6.2f} µs/record")
    if args.skip_verify:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path, keys = make_file(Path(tmp), args.records)
        made = time.perf_counter() - started
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "audit_guard.cli", "verify", "--file",
                              str(path), "--public-key", str(keys)],
                             capture_output=True, text=True)
        took = time.perf_counter() - started
        report = json.loads(run.stdout)
        print(f"verify {report['records']:,} records, {report['digests']} digests: "
              f"{took:.1f} s (exit {run.returncode}, intact={report['intact']}; "
              f"file {path.stat().st_size / 1e6:.0f} MB made in {made:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
