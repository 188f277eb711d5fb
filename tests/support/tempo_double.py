"""Tempo test double — Grafana Tempo cannot run here (no package; its build and licence are out
of reach of this machine), so `audit-guard verify --tempo` is tested against this small
http.server that answers, from a file of OTLP JSON lines made by the real pipeline (or the
collector's `file` exporter), with the response shapes Tempo documents:

    GET /api/search?tags=service.name=<svc>&start=<s>&end=<s>&limit=<n>
    GET /api/search?q={ span.<a> = "<text>" && span.<b> = <int> }&start=…   (TraceQL: only
        this form, the one `verify` asks; the attributes' values compared exactly)
        {"traces": [{"traceID", "rootServiceName", "rootTraceName", "startTimeUnixNano",
                     "durationMs"}, …], "metrics": {"inspectedTraces", …}}
    GET /api/v2/traces/<traceID>      {"trace": {"resourceSpans": [...]}}
    GET /api/traces/<traceID>         {"batches": [...]}            (the v1 answer)
    GET /api/search/tag/service.name/values   {"tagValues": [...]}

Sources: grafana/tempo docs/sources/tempo/api_docs/_index.md ("Query V2", "Search", "Search
tag values": the parameters and the examples' fields), docs/sources/tempo/traceql (`span.`
attributes, `=`, `&&`), docs/sources/tempo/api_docs/
pushing-spans-with-http.md ("Retrieve traces": a v2 answer verbatim — ids base64, `kind` by
name, int64 as strings, `"status": {}` on every span), grafana/tempo#5437 (trace-by-id ids
base64, search ids hex), grafana/tempo#3895 (`batches` renamed `resourceSpans`, kept in v1).
As Tempo does, the double matches `tags` values as case-insensitive substrings, returns the
traces that overlap [start, end] in an order of its own (here: by trace id, not by time) and
at most `limit` of them (default 20), writes search trace ids without leading zeros (the
documentation's examples have 16- and 30-digit ids), and answers 404 for an unknown trace.

    with TempoDouble(path) as tempo:      # tempo.url; tempo.searches counts /api/search calls
        ...
"""

from __future__ import annotations

import base64
import re
import threading
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict, ParseDict
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

__all__ = ["TempoDouble"]

_IDS = ("traceId", "spanId", "parentSpanId")
_TRACEQL = re.compile(r'\{\s*span\.([\w.]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*&&\s*'
                      r'span\.([\w.]+)\s*=\s*(-?\d+)\s*\}')


def _tempo_json(resource_spans: dict[str, Any]) -> dict[str, Any]:
    """One ResourceSpans of the file (hex ids) as Tempo writes it: protobuf's JSON mapping
    (base64 ids, enum names, int64 strings) and an empty status on every span."""
    copy = orjson.loads(orjson.dumps(resource_spans))
    for ss in copy.get("scopeSpans", []):
        for span in ss.get("spans", []):
            for key in _IDS:
                if span.get(key):
                    span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    out = MessageToDict(ParseDict(copy, ResourceSpans()))
    for ss in out.get("scopeSpans", []):
        for span in ss.get("spans", []):
            span.setdefault("status", {})
    return out


class _Trace:
    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []  # Tempo-shaped ResourceSpans
        self.services: set[str] = set()
        self.attributes: list[dict[str, Any]] = []  # each span's, key → the value as written
        self.start_ns = 2**64
        self.end_ns = 0
        self.root: tuple[str, str] = ("", "")  # service, span name


class TempoDouble:
    """Serves a file's spans as Tempo's HTTP API does; see the module docstring."""

    def __init__(self, path: Path, partial: bool = False) -> None:
        # partial: every v2 answer says PARTIAL, as Tempo does for a trace over its size limit
        self.partial = partial
        self.traces: dict[bytes, _Trace] = defaultdict(_Trace)
        self.searches: list[dict[str, str]] = []  # the query of every /api/search call
        for line in path.read_text().splitlines():
            if line.strip():
                self._add(orjson.loads(line))
        self._server: ThreadingHTTPServer | None = None

    def _add(self, request: dict[str, Any]) -> None:
        for rs in request.get("resourceSpans", []):
            service = next((a["value"].get("stringValue", "") for a in
                            rs.get("resource", {}).get("attributes", [])
                            if a["key"] == "service.name"), "")
            by_trace: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    by_trace[bytes.fromhex(span["traceId"])].append(span)
            for trace_id, spans in by_trace.items():
                trace = self.traces[trace_id]
                trace.services.add(service)
                for span in spans:
                    trace.attributes.append({a["key"]: next(iter(a["value"].values()), None)
                                             for a in span.get("attributes", [])})
                    trace.start_ns = min(trace.start_ns, int(span["startTimeUnixNano"]))
                    trace.end_ns = max(trace.end_ns, int(span["endTimeUnixNano"]))
                    if not span.get("parentSpanId") and not trace.root[0]:
                        trace.root = (service, span.get("name", ""))
                trace.batches.append(_tempo_json({**rs, "scopeSpans": [
                    {"scope": {"name": "audit-guard"}, "spans": spans}]}))

    # ------------------------------------------------------------------------------ answers

    def search(self, query: dict[str, str]) -> dict[str, Any]:
        self.searches.append(query)
        tags = dict(part.split("=", 1) for part in query.get("tags", "").split() if "=" in part)
        want = tags.get("service.name", "").strip('"').lower()
        matches = self._traceql(query["q"]) if "q" in query else None
        start, end = int(query.get("start", 0)), int(query.get("end", 2**40))
        limit = int(query.get("limit", 20))
        hits = [
            {"traceID": trace_id.hex().lstrip("0") or "0", "rootServiceName": t.root[0],
             "rootTraceName": t.root[1], "startTimeUnixNano": str(t.start_ns),
             "durationMs": (t.end_ns - t.start_ns) // 1_000_000}
            for trace_id, t in sorted(self.traces.items())
            if (any(matches(a) for a in t.attributes) if matches
                else any(want in s.lower() for s in t.services))
            and t.start_ns // 10**9 <= end and t.end_ns // 10**9 >= start]
        return {"traces": hits[:limit], "metrics": {"inspectedTraces": len(self.traces),
                                                     "totalBlocks": 1}}

    @staticmethod
    def _traceql(q: str) -> Any:
        found = _TRACEQL.fullmatch(q.strip())
        if found is None:
            raise ValueError(f"the Tempo double knows no such TraceQL: {q}")
        key_a, text, key_b, number = found.groups()
        text = re.sub(r"\\(.)", r"\1", text)
        return lambda attrs: attrs.get(key_a) == text and str(attrs.get(key_b)) == number

    def trace(self, trace_id: str) -> _Trace | None:
        try:
            return self.traces.get(bytes.fromhex(trace_id.rjust(32, "0")))
        except ValueError:
            return None

    # ---------------------------------------------------------------------------- lifecycle

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                parts = url.path.strip("/").split("/")
                body: Any = None
                if url.path == "/api/search":
                    body = double.search(query)
                elif url.path == "/api/search/tag/service.name/values":
                    body = {"tagValues": sorted({s for t in double.traces.values()
                                                 for s in t.services})}
                elif parts[:3] == ["api", "v2", "traces"] and len(parts) == 4:
                    found = double.trace(parts[3])
                    body = found and {"trace": {"resourceSpans": found.batches}}
                    if body and double.partial:
                        body.update(status="PARTIAL", message="trace exceeds max size")
                elif parts[:2] == ["api", "traces"] and len(parts) == 3:
                    found = double.trace(parts[2])
                    body = found and {"batches": found.batches}
                if body is None:
                    self.send_error(404, "trace not found")
                    return
                data = orjson.dumps(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> TempoDouble:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="tempo-double",
                         daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
