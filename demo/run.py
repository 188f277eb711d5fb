"""`make demo` (python -m demo): start the stack, send a burst, show what audit-guard found."""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from .nginx import nginx_binary
from .procs import repo_root, tool_path
from .stack import Stack
from .traffic import DemoRequest, burst, send

__all__ = ["run_demo", "summarize"]

MISSING_WINDOW_S = 5
DROPPED = DemoRequest("GET", "/v1/datasets/ds-5/documents?noaudit=1", expect="missing")


def _tag(span: dict, key: str) -> object:
    return next((t["value"] for t in span.get("tags", []) if t["key"] == key), None)


def summarize(stack: Stack, expected: int, timeout: float = 90) -> dict[str, int]:
    """Wait until Jaeger holds an nginx span and an app span per request (for a request whose
    app record was dropped: the missing_record span), then count what was flagged and how many
    requests form one nginx → app trace."""
    jaeger = stack.jaeger
    deadline = time.monotonic() + timeout
    spans: list[dict] = []
    app_spans: list[dict] = []
    while time.monotonic() < deadline:
        traces = jaeger.find_traces("nginx", lookback_s=3600, limit=10_000)
        all_spans = [s for t in traces for s in jaeger.spans_of(t)]
        # one access-record span per request (error-log evidence may add child spans)
        spans = [s for s in all_spans if s["process"].get("serviceName") == "nginx"
                 and _tag(s, "audit.source") == "nginx"]
        app_spans = [s for s in all_spans if s["process"].get("serviceName") == "app"]
        if len(spans) >= expected and len(app_spans) >= expected:
            break
        time.sleep(1)
    joined = {
        s["traceID"] for s in app_spans
        if any(r.get("spanID") == s["traceID"][:16] for r in s.get("references") or [])
    }

    return {
        "spans_in_jaeger": len(spans),
        "joined_traces": len(joined),
        "truncated": sum(1 for s in spans if _tag(s, "audit.truncated") is True),
        "invalid": sum(1 for s in spans if _tag(s, "audit.valid") is False),
        "server_errors": sum(
            1 for s in spans if (_tag(s, "http.response.status_code") or 0) >= 500
        ),
        "missing": sum(1 for s in app_spans if _tag(s, "audit.missing") is True),
    }


def _audit_view(stack: Stack) -> str:
    """The summary line pointing at the audit view of a cut request (audit_guard.admin)."""
    cut = stack.jaeger.find_traces("nginx", {"audit.truncated": "true"}, limit=1)
    # Jaeger's legacy API drops leading zeros of a trace id.
    trace_id = cut[0]["traceID"].zfill(32) if cut else "<trace id>"
    return f"  audit view (a cut) http://127.0.0.1:{stack.admin_port}/requests/{trace_id}"


def run_demo(once: bool = False, requests: int = 40) -> int:
    try:
        for tool in ("otelcol-audit-guard", "jaeger"):
            tool_path(tool)
        if not Path(nginx_binary()).exists():
            raise FileNotFoundError("nginx not found: run `make setup`")
    except FileNotFoundError as exc:
        print(f"audit-guard demo: {exc}", file=sys.stderr)
        return 2
    workdir = repo_root() / ".cache" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"starting the demo stack in {workdir} (logs: *.log there) ...", flush=True)
    # A short reconciliation window, so the dropped audit line is reported within the demo.
    with Stack(workdir, processor_env={"AUDIT_GUARD_RECONCILE__WINDOW_S": str(MISSING_WINDOW_S)}
               ) as stack:
        print(f"  nginx         {stack.base_url}  (access log {stack.nginx_paths.access_log})")
        print(f"  jaeger        {stack.jaeger_ports.query_url}")
        print(f"  processor     127.0.0.1:{stack.processor_port} (OTLP/gRPC), status page "
              f"http://127.0.0.1:{stack.admin_port}/")
        # The last request's audit line is dropped by the upstream (Docker's non-blocking mode,
        # an unflushed buffer): audit-guard reports it as missing_record after the window.
        plan = [*burst(requests - 1), DROPPED]
        statuses = [send(stack.base_url, r) for r in plan]
        expected_trunc = sum(1 for r in plan if r.expect == "truncated")
        expected_invalid = sum(1 for r in plan if r.expect == "invalid")
        expected_missing = sum(1 for r in plan if r.expect == "missing")
        print(f"sent {len(plan)} requests ({statuses.count(None)} cut on purpose); "
              "waiting for their spans in Jaeger ...", flush=True)
        found = summarize(stack, len(plan))
        ok = (
            found["spans_in_jaeger"] == len(plan)
            and found["joined_traces"] == len(plan)
            and found["truncated"] == expected_trunc
            and found["invalid"] == expected_invalid
            and found["missing"] == expected_missing
        )
        print()
        print("audit-guard demo summary")
        print(f"  requests sent      {len(plan)}")
        print(f"  spans in Jaeger    {found['spans_in_jaeger']}")
        print(f"  nginx → app traces {found['joined_traces']}  (the app record is a child span)")
        print(f"  truncated          {found['truncated']}  (expected {expected_trunc})")
        print(f"  invalid            {found['invalid']}  (expected {expected_invalid})")
        print(f"  missing app record {found['missing']}  (expected {expected_missing}: the "
              f"upstream dropped its audit line; reported after {MISSING_WINDOW_S} s)")
        print(f"  5xx                {found['server_errors']}")
        print(f"  Jaeger UI/API      {stack.jaeger_ports.query_url}/search?service=nginx")
        print(f"  status page        http://127.0.0.1:{stack.admin_port}/\n{_audit_view(stack)}")
        print(f"  flagged spans      {stack.jaeger_ports.query_url}/api/traces?service=nginx"
              '&tags={"audit.truncated":"true"}')
        verdict = "OK" if ok else f"MISMATCH — see the logs in {workdir}"
        print(f"  result             {verdict}")
        if not once:
            print("\nthe stack stays up; press Ctrl-C to stop it", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
            print("stopping ...", flush=True)
    return 0 if ok else 1
