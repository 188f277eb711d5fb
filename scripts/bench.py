#!/usr/bin/env python3
"""Processor throughput benchmark (make bench) — not a test.

Nginx access records go from a serialized OTLP ExportLogsServiceRequest, over real gRPC on
loopback, through `audit-guard serve` (pinned to one core), out as serialized spans to a sink
on the other core. The figure is records per CPU-second of the processor process
(utime+stime from /proc), i.e. per core. Side by side, the same records are decoded bare
(protobuf parse + orjson per body) in this process, so the pipeline's cost is also given as a
ratio to the unavoidable decode work.

It measures on the same server, round after round (each with records of its own): `--rounds`
rounds with one Export call in flight (the per-record CPU cost; their median is the figure of
record, as this kind of machine varies by ±20 % within minutes: five rounds by default, so that
one or two rounds in a slow phase do not decide it), then one with 4 in flight, as
the shipped collector config sends (num_consumers: 4), where calls contend for the one pinned
core.

Then, in this process, the integrity chain's cost (issue #14; integrity is off in the service
measured above): the same requests through `Pipeline` without and with a `ChainStage` (its head
file written and fsynced at each commit, as serve does), alternating, best of `--chain-rounds`
Exports each, in CPU time of this thread.

The last line is `records_per_second_per_core=<N>` (one call in flight, the median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path

import grpc
import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from demo.procs import free_port, port_open, wait_until  # noqa: E402

FILE_PATH = "/var/log/nginx/audit.json.log"
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
USERS = [f"user-{i}" for i in range(200)]
APPS = [f"app-{i}" for i in range(20)]
# A service-API mix (weights per 100 requests): chat dominates; a model configuration change
# is rare. Every 10th response is 4xx/5xx, every 50th is cut short, every 97th has no user.
_MSEC = "@msec@"
PATHS = (
    [("POST", "/v1/chat-messages")] * 60
    + [("POST", "/v1/completion-messages")] * 15
    + [("GET", "/v1/datasets/{}/documents")] * 15
    + [("GET", "/v1/parameters")] * 9
    + [("PUT", "/v1/model-configs")] * 1
)


BASE_S = 1764165600  # 2025-11-26T14:00:00Z: record i is written at BASE_S + i ms


def make_line(i: int, at_ms: int | None = None) -> bytes:
    """Record i's line exactly as otel/nginx/audit_log_format.conf makes nginx write it (every
    key of the shipped format; numbers bare, msec with its 3 decimals, the rest strings),
    written at `at_ms` (Unix ms; default BASE_S + i ms: 1,000 requests a second)."""
    method, path = PATHS[(i * 37) % len(PATHS)]
    at_ms = BASE_S * 1000 + i if at_ms is None else at_ms
    second = at_ms // 1000
    status = 200 if i % 10 else (403 if i % 20 else 502)
    sent = 2048 if i % 50 else 512  # every 50th response is cut short
    uri = path.format(f"ds-{i % 300}")
    line = orjson.dumps({
        "time_iso8601": datetime.fromtimestamp(second, UTC).isoformat(),
        "msec": _MSEC,
        "request_id": blake2b(i.to_bytes(8, "big"), digest_size=16).hexdigest(),  # as random
        "connection": i // 3,
        "connection_requests": i % 3 + 1,
        "remote_addr": f"10.0.{i % 7}.{i % 250}",
        "request_method": method,
        "request_uri": uri,
        "uri": uri,
        "server_protocol": "HTTP/1.1",
        "host": "api.example.com",
        "server_name": "api.example.com",
        "status": str(status),
        "request_completion": "OK",
        "body_bytes_sent": sent,
        "bytes_sent": sent + 200,
        "sent_http_content_length": "2048",
        "sent_http_content_type": "application/json",
        "upstream_status": str(status),
        "upstream_response_length": "2048",
        "upstream_bytes_received": "2248",
        "upstream_response_time": "0.040",
        "upstream_addr": "172.18.0.5:5001",
        "request_time": 0.042,
        "http_user_agent": "Mozilla/5.0 (bench)",
        "http_traceparent": "",
        "user_id": "" if i % 97 == 0 else USERS[i % len(USERS)],
        "app_id": APPS[i % len(APPS)],
    })
    # nginx writes $msec as seconds with exactly 3 decimals, which a float cannot keep (…600.5).
    return line.replace(b'"' + _MSEC.encode() + b'"', f"{second}.{at_ms % 1000:03d}".encode())


def make_batches(records: int, batch: int, first: int = 0, start_s: int | None = None
                 ) -> list[bytes]:
    """Requests of distinct records (numbered from `first`; written 1 ms apart from `start_s`,
    default BASE_S + first ms; each read by the collector 2 ms after it was written): a record
    sent twice would be measured as a duplicate, which is not the common case."""
    start_ms = BASE_S * 1000 + first if start_s is None else start_s * 1000
    out = []
    offset = 0
    for start in range(first, first + records, batch):
        req = ExportLogsServiceRequest()
        resource_logs = req.resource_logs.add()
        resource_logs.resource.attributes.add(key="audit.source").value.string_value = "nginx"
        scope = resource_logs.scope_logs.add()
        for i in range(start, min(start + batch, first + records)):
            # What the shipped file_log/nginx_access receiver sends with each line.
            at_ms = start_ms + i - first
            line = make_line(i, at_ms)
            record = scope.log_records.add()
            record.observed_time_unix_nano = (at_ms + 2) * 1_000_000
            record.body.string_value = line.decode()
            attributes = record.attributes
            attributes.add(key="log.file.path").value.string_value = FILE_PATH
            attributes.add(key="log.file.name").value.string_value = FILE_PATH.rsplit("/")[-1]
            attributes.add(key="log.file.record_offset").value.int_value = offset
            offset += len(line) + 1
        out.append(req.SerializeToString())
    return out


def run_sink(port: int) -> None:
    """The downstream: accepts span requests without decoding them (costs the bench nothing)."""
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: b"", request_deserializer=None, response_serializer=None)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(4),
                         options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_decode_rate(batches: list[bytes]) -> float:
    start = time.process_time()
    n = 0
    for payload in batches:
        req = ExportLogsServiceRequest.FromString(payload)
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    orjson.loads(lr.body.string_value)
                    n += 1
    return n / (time.process_time() - start)


def chain_cost(batch: int, rounds: int, first: int) -> tuple[float, float, float]:
    """(without, with) the chain in µs CPU a record, best of `rounds` Exports of `batch`
    records each (the same records through both pipelines, new ones every round), and the
    median wall time of a commit's head-file write + fsync in ms (with minus without)."""
    from audit_guard.config import Settings
    from audit_guard.integrity.chain import ChainStage
    from audit_guard.pipeline import Pipeline

    requests = [ExportLogsServiceRequest.FromString(payload)
                for payload in make_batches(batch * (rounds + 1), batch, first=first)]
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as state_dir:
        pipelines = {"without": Pipeline(Settings()),
                     "with": Pipeline(Settings(), chain=ChainStage(Path(state_dir)))}
        best = dict.fromkeys(pipelines, float("inf"))
        commits: dict[str, list[float]] = {name: [] for name in pipelines}
        for n, request in enumerate(requests):  # the first round warms up, untimed
            for name, pipeline in pipelines.items():
                cpu0 = time.thread_time()
                pipeline.begin()
                pipeline.process_logs(request, 1764165600_000_000_000)
                wall0 = time.perf_counter()
                pipeline.commit()
                wall = time.perf_counter() - wall0
                cpu = time.thread_time() - cpu0
                if n:
                    best[name] = min(best[name], cpu)
                    commits[name].append(wall)
    head_write_ms = (statistics.median(commits["with"])
                     - statistics.median(commits["without"])) * 1e3
    return best["without"] / batch * 1e6, best["with"] / batch * 1e6, head_write_ms


def _decoder() -> str:
    """Which decoder the service runs for the shipped format (the figure depends on it)."""
    from audit_guard.sources.nginx_access import native_decoder

    if not native_decoder():
        return "msgspec (the C extension audit_guard.sources._audit_json was not built)"
    return "C (audit_guard.sources._audit_json)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=2000, help="records per Export call")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds with one call in flight (the figure is their median)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="Export calls in flight for the second measurement")
    parser.add_argument("--chain-rounds", type=int, default=20,
                        help="Exports through each in-process pipeline for the chain's cost "
                        "(0: skip it)")
    args = parser.parse_args()

    # The records are written now (the warm-up) and from an hour later on (the measured ones),
    # each read 2 ms after: what is measured is a service past its start-up window (the first
    # reconcile.window_s after the first Nginx request, when the reconciler holds what each
    # audited request expects in case the app's records come later: ~1–2 µs a record more).
    # Every round has records of its own (numbered apart), built just before it is sent.
    clock = iter(range(int(time.time()) + 3600, 1 << 40, args.records // 1000 + 1))
    warmup = make_batches(args.batch * 5, args.batch, first=10**12, start_s=int(time.time()))
    phases = [1] * args.rounds + [args.concurrency]

    def round_batches(n: int) -> list[bytes]:
        return make_batches(args.records, args.batch, first=(n + 1) * args.records,
                            start_s=next(clock))

    cpus = sorted(os.sched_getaffinity(0))
    proc_cpu, other_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    sink_port, proc_port = free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-c",
                             f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r});"
                             f"import bench; bench.run_sink({sink_port})"])
    env = {**os.environ, "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{proc_port}",
           "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{sink_port}",
           "AUDIT_GUARD_SERVER__MAX_INFLIGHT_REQUESTS": str(max(args.concurrency, 1)),
           "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
           "AUDIT_GUARD_LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "audit_guard.cli", "serve"], env=env, cwd=ROOT)
    try:
        os.sched_setaffinity(server.pid, proc_cpu)
        os.sched_setaffinity(sink.pid, other_cpus)
        os.sched_setaffinity(0, other_cpus)
        wait_until(lambda: port_open(proc_port) and port_open(sink_port), 60, "processor + sink")
        channel = grpc.insecure_channel(f"127.0.0.1:{proc_port}", options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024)])
        export = channel.unary_unary(LOGS_EXPORT, request_serializer=None,
                                     response_deserializer=None)
        list(map(lambda b: export(b, timeout=120), warmup))
        results: list[tuple[int, float, float]] = []  # (calls in flight, CPU s, wall s)
        first_round: list[bytes] = []
        for n, concurrency in enumerate(phases):
            calls = "1 call" if concurrency == 1 else f"{concurrency} calls"
            print(f"round {n + 1} of {len(phases)}: building {args.records} records in batches "
                  f"of {args.batch}, then {calls} in flight ...", flush=True)
            batches = round_batches(n)
            first_round = first_round or batches
            with futures.ThreadPoolExecutor(concurrency) as pool:
                cpu0, wall0 = cpu_seconds(server.pid), time.perf_counter()
                list(pool.map(lambda b: export(b, timeout=120), batches))
                wall = time.perf_counter() - wall0
                results.append((concurrency, cpu_seconds(server.pid) - cpu0, wall))
            del batches
        channel.close()
    finally:
        server.terminate()
        sink.terminate()
        server.wait(30)
        sink.wait(30)

    os.sched_setaffinity(0, set(cpus))
    bare = bare_decode_rate(first_round)
    singles = [args.records / cpu for concurrency, cpu, _ in results[:args.rounds]]
    per_core = statistics.median(singles)
    print(f"records                         {args.records} a round, in batches of {args.batch}")
    print(f"processor pinned to             CPU {min(proc_cpu)}; sink and client on the other")
    print(f"nginx line decoder              {_decoder()}")
    for concurrency, cpu, wall in results:
        label = "1 call in flight" if concurrency == 1 else f"{concurrency} calls in flight"
        print(f"{label:<32}{cpu:.2f} CPU s, {wall:.2f} s wall, "
              f"{args.records / cpu:,.0f} records/s per core")
    print(f"1 call in flight, median        {per_core:,.0f} records/s per core "
          f"(of {args.rounds} rounds)")
    print(f"bare decode (protobuf+orjson)   {bare:,.0f} records/s per core")
    print(f"pipeline cost / bare decode     {bare / per_core:.1f}x")
    if args.chain_rounds > 0:
        without, with_chain, head_ms = chain_cost(args.batch, args.chain_rounds,
                                                  first=(len(phases) + 1) * args.records)
        print(f"integrity chain                 +{with_chain - without:.2f} µs CPU a record "
              f"(in process, same records: {without:.2f} → {with_chain:.2f} µs, best of "
              f"{args.chain_rounds} Exports of {args.batch}); head file write + fsync: "
              f"{head_ms:.1f} ms wall an Export")
    print(f"records_per_second_per_core={per_core:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
