"""Exported spans read back from Grafana Tempo's HTTP API for `audit-guard verify --tempo`.

Two calls, as Tempo documents them (docs/sources/tempo/api_docs/_index.md, "Search" and
"Query V2"):

- `GET /api/search?tags=service.name=<svc>&start=<unix s>&end=<unix s>&limit=<n>`: the trace
  ids of a service in a time range (`{"traces": [{"traceID": …}, …]}`). Tempo takes "the first
  N results" of a parallel search, so a page that comes back full says nothing of what was left
  out: the window is halved and both halves searched, down to one second (Tempo's unit);
  a one-second window still full is searched again with a larger limit, and if even that is
  full the read stops with an error rather than report records it did not read as deleted.
  The tag match is a case-insensitive substring: spans of other services are dropped.
- `GET /api/v2/traces/<id>`: the whole trace as OTLP JSON, `{"trace": {"resourceSpans": …}}`
  (older versions: `"batches"`; Tempo's /api/traces/<id> answers `{"batches": …}` and is
  asked when v2 is not there). Ids come base64-encoded (Tempo marshals with protobuf's JSON
  mapping, grafana/tempo#5437), enums by name, int64 as strings: audit_guard.integrity.
  otlp_json and readers take each. A trace answered `"status": "PARTIAL"` is an error (some
  of its spans were not returned).

A trace holds the spans of several services (nginx's and the app's record share the request's
trace id): each trace is fetched once and its spans of the services asked for are kept. A range
longer than a day is searched a day at a time (Tempo refuses a search over more than its
`max_duration`, 168 h by default).

`TempoLookup` finds one chain link by its attributes with TraceQL (`q={ span.audit.chain.id =
"…" && span.audit.chain.seq = N }`, docs/sources/tempo/traceql) in the day before the range: a
late record's event time lies before the range read, and it is not a deleted one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import orjson

from .otlp_json import TempoSearch, TempoTrace, TracesData, decode_traces
from .readers import ReaderError, ReadSpan, SpanReader, get, spans_of_request

__all__ = ["TempoLookup", "read_tempo"]

MAX_LIMIT = 100_000  # the largest page asked for one second of one service
DAY = 86_400


def read_tempo(base_url: str, services: list[str] | None, since_s: float, until_s: float,
               page: int = 1000, timeout: float = 30) -> Iterator[ReadSpan]:
    """The spans of `services` (default: every service.name Tempo knows) in traces Tempo finds
    in [since_s, until_s]."""
    base = base_url.rstrip("/")
    reader = SpanReader()
    names = services or _service_names(base, since_s, until_s, timeout)
    wanted = set(names)
    seen: set[str] = set()
    for service in names:
        for trace_id in _trace_ids(base, service, int(since_s), int(until_s) + 1, page, timeout):
            key = trace_id.lower().lstrip("0")  # Tempo's search drops leading zeros
            if key in seen:
                continue
            seen.add(key)
            for span in spans_of_request(_trace(base, trace_id, timeout), "", reader):
                if span.service in wanted:
                    span.where = f"tempo trace {span.trace_id}"
                    yield span


def _service_names(base: str, since: float, until: float, timeout: float) -> list[str]:
    url = f"{base}/api/search/tag/service.name/values?" + urllib.parse.urlencode(
        {"start": int(since), "end": int(until) + 1})
    body = get(url, timeout)
    try:
        values = (orjson.loads(body) if body else {}).get("tagValues") or []
    except orjson.JSONDecodeError as exc:
        raise ReaderError(f"GET {url}: not JSON: {exc}") from None
    return [str(v.get("value", "")) if isinstance(v, dict) else str(v) for v in values]


def _trace_ids(base: str, service: str, start: int, end: int, page: int, timeout: float
               ) -> Iterator[str]:
    """Trace ids of `service` in [start, end] (unix seconds), windows halved while full."""
    stack = [(lo, min(lo + DAY, end), page) for lo in range(start, end, DAY)][::-1]
    while stack:
        lo, hi, limit = stack.pop()
        found = _search(base, service, lo, hi, limit, timeout)
        if len(found) < limit:
            yield from found
        elif hi - lo > 1:  # full: what was left out is unknown; split the window
            mid = (lo + hi) // 2
            stack += [(mid, hi, limit), (lo, mid, limit)]
        elif limit < MAX_LIMIT:
            stack.append((lo, hi, min(limit * 10, MAX_LIMIT)))
        else:
            raise ReaderError(
                f"Tempo found {limit} or more traces of service {service!r} in one second "
                f"({lo}..{hi}): its search cannot page further. Verify from the collector's "
                "file export (--file) instead, or raise Tempo's search result limit.")


def _search(base: str, service: str, start: int, end: int, limit: int, timeout: float,
            traceql: str | None = None) -> list[str]:
    tags = f'service.name="{service}"' if " " in service else f"service.name={service}"
    query = {"q": traceql} if traceql else {"tags": tags}
    url = f"{base}/api/search?" + urllib.parse.urlencode(
        {**query, "start": start, "end": end, "limit": limit})
    body = get(url, timeout)
    try:
        hits = decode_traces(body, TempoSearch).traces if body else []
    except ValueError as exc:
        raise ReaderError(f"GET {url}: not Tempo's search answer: {exc}") from None
    return [hit.traceID for hit in hits if hit.traceID]


def _trace(base: str, trace_id: str, timeout: float) -> TracesData:
    quoted = urllib.parse.quote(trace_id, safe="")
    url = f"{base}/api/v2/traces/{quoted}"
    body = get(url, timeout)
    if body is None:  # no v2 API (Tempo before 2.6?) or no such trace: ask v1
        url = f"{base}/api/traces/{quoted}"
        body = get(url, timeout)
        if body is None:
            return TracesData()
    try:
        answer = decode_traces(body, TempoTrace)
    except ValueError as exc:
        raise ReaderError(f"GET {url}: not Tempo's trace answer: {exc}") from None
    if str(answer.status).upper() in ("PARTIAL", "1"):
        why = answer.message or "no reason given"
        raise ReaderError(f"GET {url}: Tempo returned the trace in part ({why}); its missing "
                          "spans would read as deleted records")
    trace = answer.trace or TracesData()
    return TracesData(resourceSpans=trace.resource_spans() + answer.batches)


class TempoLookup:
    """One chain link looked up by its attributes (TraceQL) in the day before `since_s`."""

    def __init__(self, base_url: str, since_s: float, timeout: float = 30) -> None:
        self._base = base_url.rstrip("/")
        self._start, self._end = int(since_s) - DAY, int(since_s) + 1
        self._timeout = timeout
        self._reader = SpanReader()

    def __call__(self, service: str, chain_id: str, seq: int) -> list[ReadSpan]:
        quoted = chain_id.replace("\\", "\\\\").replace('"', '\\"')
        traceql = f'{{ span.audit.chain.id = "{quoted}" && span.audit.chain.seq = {seq} }}'
        out = []
        for trace_id in _search(self._base, service, self._start, self._end, 20,
                                self._timeout, traceql):
            for span in spans_of_request(_trace(self._base, trace_id, self._timeout), "",
                                         self._reader):
                if span.attrs.get("audit.chain.id") == chain_id and \
                        span.attrs.get("audit.chain.seq") == seq:
                    span.where = f"tempo trace {span.trace_id}"
                    out.append(span)
        return out
