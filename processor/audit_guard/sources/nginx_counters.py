"""nginx's own request counters → CounterSample: an independent count to check the access log by.

The access log can lose lines (a full disk, `access_log off` in one location, a buffered log that
was never flushed); nginx's counters cannot, because they are bumped whether a line is written or
not. Comparing "requests counted" with "access records seen" over the same interval is therefore
the only way to notice records that never existed. Four inputs carry such a counter:

stub_status (ngx_http_stub_status_module, in Debian's nginx), plain text written by
ngx_http_stub_status_handler as

    Active connections: 1 \\n
    server accepts handled requests\\n
     12 12 40 \\n
    Reading: 0 Writing: 1 Waiting: 0 \\n

(note the trailing blanks). `requests` (the third number) counts every client request of the
whole instance, the status request itself included, so it becomes one sample with host "*".

nginx-module-vts (vozlt/nginx-module-vts, src/ngx_http_vhost_traffic_status_display_json.h and
_display_prometheus.h): per server zone — the first `server_name` of the server block, or the
Host header with `vhost_traffic_status_filter_by_host on` — plus a sum zone named "*" (the name
is `vhost_traffic_status_display_sum_key`, default "*"; a different sum key is reported under
its own name). `/status/format/json` gives `serverZones.<zone>.requestCounter`;
`/status/format/jsonp` the same inside `callback(...)`. `/status/format/prometheus` gives

    nginx_vts_server_requests_total{host="<zone>",code="1xx"} 0      (… 2xx, 3xx, 4xx, 5xx)

and, in older VTS releases, also `code="total"`. The total, when present, is the counter itself;
the classes' sum can fall short of requestCounter for a response without a 1xx..5xx status.
VTS escapes `"` `\\` and newlines in the host label as the exposition format requires, and
writes an invalid UTF-8 byte as `\\\\xHH`.

The collector's `prometheus` receiver scraping the VTS Prometheus page, sent over OTLP: a Sum
named nginx_vts_server_requests_total (the receiver keeps `_total`; `nginx_vts_server_requests`
is accepted too, for a receiver that trims the suffix, and a Gauge is accepted for a scrape that
lost its `# TYPE` line), one data point per host and code.

Resets. A sample carries `start_time_unix_nano` only when its source says when the count began:
OTLP data points can (the cumulative start time; a new start is a reset) — but the collector
0.160 prometheus receiver sends 0 there (→ None) unless something downstream of it, such as the
contrib metricstarttime processor, fills it in. The text formats do not, and their candidates
are misleading: VTS's `loadMsec` /
`nginx_vts_start_time_seconds` is taken when the configuration is read, so it moves on every
`nginx -s reload` although the counters live on in shared memory (the zone is inherited by the
new cycle), and it stays put when `/status/control?cmd=reset` zeroes them; restoring from
`vhost_traffic_status_dump` keeps the old counts over a restart. stub_status counters likewise
survive a reload and reset on restart. So a reset has to be read from the counter going down,
as Prometheus does, whenever the start is None; `loadMsec` is not read.

VTS's JSON has `overCounts.requestCounter`, the number of times requestCounter wrapped around
`overCounts.maxIntegerSize` (a 32-bit build); the sample's count adds those wraps back.

Liberal where real outputs vary (CRLF, trailing blanks, comments, label order, extra labels,
escaped label values, a JSONP wrapper, integral floats), strict where a wrong number would be
worse than none: a counter that is not a finite, non-negative integer, a series without a host,
the same host and code twice, or a text that is not the expected format at all raises
CounterFormatError. The exposition syntax (labels, escapes, values) is read by
prometheus_client's parser, line by line; those checks sit on top of it. Nothing here reads the
clock or does I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import DataPointFlags, NumberDataPoint
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ALL_ZONES",
    "METRIC_NAMES",
    "CounterFormatError",
    "CounterSample",
    "parse_stub_status",
    "parse_vts_json",
    "parse_vts_prometheus",
    "samples_from_otlp",
]

ALL_ZONES = "*"
METRIC_NAME = "nginx_vts_server_requests_total"
# What the OTLP path accepts: the exposition name, and the name with `_total` trimmed.
METRIC_NAMES = (METRIC_NAME, "nginx_vts_server_requests")

_TOTAL_CODE = "total"
_CLASS_CODES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_EXCERPT_CHARS = 80
_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK


class CounterFormatError(ValueError):
    """The text is not of the expected format; the message says what was expected and shows a
    short excerpt of what came."""


@dataclass(frozen=True, slots=True)
class CounterSample:
    host: str  # VTS server zone (= the server block's server_name); "*" = all zones together
    requests: int  # cumulative request counter
    time_unix_nano: int  # when the counter was read
    # When the counter started (OTLP cumulative start time); a new start = a counter reset.
    start_time_unix_nano: int | None = None
    # Requests in progress when it was read (stub_status `Reading` + `Writing`): stub_status
    # counts a request when it starts, the access log when it ends. None when not reported.
    in_flight: int | None = None


def _excerpt(text: str | bytes) -> str:
    shown = text if isinstance(text, str) else text.decode("utf-8", "replace")
    shown = shown.strip()
    if len(shown) > _EXCERPT_CHARS:
        shown = shown[:_EXCERPT_CHARS] + "…"
    return repr(shown)


def _fail(expected: str, got: str | bytes) -> CounterFormatError:
    return CounterFormatError(f"expected {expected}, got {_excerpt(got)}")


# A number as the exposition format writes one (no `_` separators, which float() would take).
_DECIMAL = re.compile(r"[+]?\d+", re.ASCII)
_FLOAT = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.I | re.ASCII
)


def _count(value: object, what: str) -> int:
    """A counter value → int; anything but a finite, non-negative whole number raises.

    Accepts ints, integral floats (the Prometheus text and OTLP doubles carry counts as floats)
    and their decimal spellings. bool is refused although it is an int: `true` is no count.
    """
    number: int | float
    if isinstance(value, bool):
        raise _fail(f"a request count for {what}", str(value))
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if _DECIMAL.fullmatch(text):
            number = int(text)
        elif _FLOAT.fullmatch(text):
            number = float(text)
        else:
            raise _fail(f"a number as the request count of {what}", text)
    else:
        raise _fail(f"a number as the request count of {what}", repr(value))
    if isinstance(number, float):
        if not math.isfinite(number) or number != int(number):
            raise _fail(f"a whole, finite request count for {what}", repr(number))
        number = int(number)
    if number < 0:
        raise _fail(f"a non-negative request count for {what}", str(number))
    return number


# --------------------------------------------------------------------------------- stub_status

_STUB_REQUESTS = re.compile(r"server\s+accepts\s+handled\s+requests\s+(\S+)\s+(\S+)\s+(\S+)")


_STUB_IN_PROGRESS = re.compile(r"Reading:\s*(\d+)\s+Writing:\s*(\d+)")


def parse_stub_status(text: str, time_unix_nano: int) -> list[CounterSample]:
    """stub_status page → one sample, host "*", requests = the third number after
    `server accepts handled requests`.

    Only the whitespace between tokens is assumed, not the line breaks: the page is short enough
    to be flattened (HTML renderings of the docs, a log line) and still be read.
    """
    m = _STUB_REQUESTS.search(text)
    if m is None:
        raise _fail("an nginx stub_status page ('server accepts handled requests' + 3 numbers)",
                    text)
    for label, raw in zip(("accepts", "handled", "requests"), m.groups(), strict=True):
        if not (raw.isascii() and raw.isdigit()):  # all three: a garbled page is not half-read
            raise _fail(f"a number for stub_status '{label}'", raw)
    busy = _STUB_IN_PROGRESS.search(text)
    in_flight = int(busy.group(1)) + int(busy.group(2)) if busy else None
    return [CounterSample(ALL_ZONES, int(m.group(3)), time_unix_nano, in_flight=in_flight)]


# ------------------------------------------------------------------------------------ VTS JSON

# `callback(` … `)` of /status/format/jsonp; the callback name is configurable.
_JSONP = re.compile(r"[A-Za-z_$][\w$.]*\s*\((.*)\)\s*;?", re.DOTALL)
# Keys of VTS's main section: a document with these but no serverZones has no zone yet.
_VTS_MAIN_KEYS = frozenset({"hostName", "moduleVersion", "nginxVersion", "loadMsec", "nowMsec"})


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    m = _JSONP.fullmatch(text)
    if m is not None:
        try:
            return json.loads(m.group(1))
        except ValueError:
            pass
    raise _fail("VTS JSON (/status/format/json)", text)


def _zone_requests(name: str, zone: object) -> int:
    """requestCounter of one serverZones entry, with VTS's overflow count added back."""
    if not isinstance(zone, Mapping) or "requestCounter" not in zone:
        raise _fail(f"an object with requestCounter for serverZones[{name!r}]",
                    json.dumps(zone)[:200])
    value = zone["requestCounter"]
    if isinstance(value, str):  # VTS writes a bare number; a quoted one is another program's
        raise _fail(f"a JSON number as requestCounter of serverZones[{name!r}]", repr(value))
    count = _count(value, f"serverZones[{name!r}]")
    over = zone.get("overCounts")
    if isinstance(over, Mapping) and over.get("requestCounter"):
        wraps = _count(over["requestCounter"], f"serverZones[{name!r}].overCounts")
        limit = _count(over.get("maxIntegerSize"), f"serverZones[{name!r}].overCounts size")
        count += wraps * (limit + 1)
    return count


def parse_vts_json(data: bytes | str, time_unix_nano: int) -> list[CounterSample]:
    """VTS `/status/format/json` (or jsonp) → one sample per serverZones entry, "*" included,
    in the document's order. A VTS document without serverZones (no request counted yet) gives
    an empty list; loadMsec/nowMsec are not read (see the module docstring)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip().lstrip("\ufeff")
    doc = _load_json(text)
    if not isinstance(doc, Mapping):
        raise _fail("a VTS JSON object", text)
    zones = doc.get("serverZones")
    if zones is None:
        if _VTS_MAIN_KEYS & doc.keys():
            return []
        raise _fail("VTS JSON with serverZones", text)
    if not isinstance(zones, Mapping):
        raise _fail("serverZones to be an object", json.dumps(zones)[:200])
    return [
        CounterSample(str(name), _zone_requests(str(name), zone), time_unix_nano)
        for name, zone in zones.items()
    ]


# ------------------------------------------------------------------------------ VTS Prometheus

def _request_series(line: str) -> tuple[dict[str, str], int | float] | None:
    """A line of the exposition format → (labels, value) when it is a METRIC_NAME sample; None
    for another metric's line. The format itself (label syntax and escapes, the value, an
    optional timestamp) is prometheus_client's parser's; a line it refuses raises."""
    # The parser takes "1 2 3" as value 1 at timestamp "2 3"; the format has one value and at
    # most one timestamp after the labels.
    after_labels = line[line.rfind("}") + 1:] if "{" in line else line.split(None, 1)[-1]
    if not 1 <= len(after_labels.split()) <= 2:
        raise _fail("'<metric>{labels} <value> [timestamp]'", line)
    try:
        families = list(text_string_to_metric_families(line + "\n"))
    except ValueError as exc:  # the parser's reason: "Invalid labels: …", "Invalid value: …"
        raise _fail(f"'<metric>{{labels}} <value> [timestamp]' ({exc})", line) from None
    for family in families:
        for sample in family.samples:
            if sample.name == METRIC_NAME:
                return sample.labels, sample.value
    return None  # a longer name sharing the prefix


def _counted_codes(codes: Mapping[str, object], host: str) -> list[str]:
    """The codes whose series make up the request count: code="total" when present, else the
    1xx..5xx present (summed); other codes are not requests classes VTS writes."""
    if _TOTAL_CODE in codes:
        return [_TOTAL_CODE]
    classes = [code for code in _CLASS_CODES if code in codes]
    if not classes:
        raise _fail(f'code="total" or code="1xx".."5xx" for host {host!r}',
                    ", ".join(f"code={code!r}" for code in codes))
    return classes


def parse_vts_prometheus(text: str, time_unix_nano: int) -> list[CounterSample]:
    """VTS `/status/format/prometheus` → one sample per host of nginx_vts_server_requests_total,
    in order of first appearance.

    Labels other than host and code are ignored; a series without `code` counts as the total.
    A sample's own timestamp (VTS writes none) is ignored: time_unix_nano is when it was read.
    A page with VTS metrics but no request series (no zone yet) gives an empty list; a page
    without any `nginx_vts_` metric raises.
    """
    by_host: dict[str, dict[str, int]] = {}
    seen_vts = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if "nginx_vts_" in line:
            seen_vts = True
        if line.startswith("#") or not line.startswith(METRIC_NAME):
            continue
        series = _request_series(line)
        if series is None:
            continue
        labels, value = series
        host = labels.get("host")
        if host is None:
            raise _fail(f"a host label on {METRIC_NAME}", line)
        code = labels.get("code", _TOTAL_CODE)
        codes = by_host.setdefault(host, {})
        if code in codes:
            raise _fail(f"one {METRIC_NAME} series per host and code", line)
        codes[code] = _count(value, f"host {host!r} code {code!r}")
    if not seen_vts:
        raise _fail("VTS Prometheus output (nginx_vts_* metrics)", text)
    return [
        CounterSample(host, sum(map(codes.__getitem__, _counted_codes(codes, host))),
                      time_unix_nano)
        for host, codes in by_host.items()
    ]


# ----------------------------------------------------------------------------------------- OTLP


def _any_text(value: AnyValue) -> str | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind in ("int_value", "double_value", "bool_value"):
        return str(getattr(value, kind))
    return None


def _attributes(attributes: Iterable[KeyValue]) -> dict[str, str | None]:
    return {kv.key: _any_text(kv.value) for kv in attributes}


def _point_value(point: NumberDataPoint, where: str) -> int:
    kind = point.WhichOneof("value")
    if kind is None:
        raise _fail(f"an as_int or as_double value on {where}", str(point))
    return _count(getattr(point, kind), where)


def samples_from_otlp(request: ExportMetricsServiceRequest) -> list[CounterSample]:
    """VTS's request counter as the collector's prometheus receiver sends it → one sample per
    (resource, host, data point time), in order of first appearance.

    Data points of one scrape share a time; code="total" wins over the sum of the classes as in
    parse_vts_prometheus. start_time_unix_nano is the data points' start (the latest of those
    summed; 0 = unknown → None). Points flagged "no recorded value" (the receiver's staleness
    markers when a series or the target disappears) are skipped. Two resources (two scraped
    nginx instances) are never summed: each yields its own samples, also for the same host.
    """
    groups: dict[tuple[bytes, str, int], dict[str, tuple[int, int]]] = {}
    for resource_metrics in request.resource_metrics:
        resource_key = resource_metrics.resource.SerializeToString(deterministic=True)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name not in METRIC_NAMES:
                    continue
                kind = metric.WhichOneof("data")
                if kind == "sum":
                    points = metric.sum.data_points
                elif kind == "gauge":
                    points = metric.gauge.data_points
                else:
                    raise _fail(f"a Sum for {metric.name}", f"a {kind}")
                for point in points:
                    if point.flags & _NO_RECORDED_VALUE:
                        continue
                    attrs = _attributes(point.attributes)
                    host = attrs.get("host")
                    if host is None:
                        raise _fail(f"a host attribute on {metric.name}", str(point))
                    code = attrs.get("code") or _TOTAL_CODE
                    where = f"{metric.name} host {host!r} code {code!r}"
                    value = _point_value(point, where)
                    codes = groups.setdefault((resource_key, host, point.time_unix_nano), {})
                    if code in codes:
                        raise _fail(f"one {metric.name} point per host, code and time", str(point))
                    codes[code] = (value, point.start_time_unix_nano)
    samples = []
    for (_, host, time_unix_nano), codes in groups.items():
        counted = [codes[code] for code in _counted_codes(codes, host)]
        requests = sum(value for value, _ in counted)
        start = max(start for _, start in counted)
        samples.append(CounterSample(host, requests, time_unix_nano, start or None))
    return samples
