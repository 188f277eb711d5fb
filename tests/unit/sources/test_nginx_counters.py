"""nginx's request counters (stub_status, VTS JSON/Prometheus, VTS via the collector over OTLP).

stub_status is read from a real Debian nginx. nginx-module-vts cannot be installed here, so its
pages come from literal texts laid out as the module writes them — its README documents only
the key layout (with `...` for values), not a filled-in example, so the texts below follow the
format strings in the module's source — and from tests/support/vts_double.py, which the REAL
collector
(prometheus receiver → otlp_grpc exporter) scrapes in the last test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from audit_guard.sources.nginx_counters import (
    METRIC_NAMES,
    CounterFormatError,
    CounterSample,
    parse_stub_status,
    parse_vts_json,
    parse_vts_prometheus,
    samples_from_otlp,
)
from demo.nginx import nginx_binary
from demo.procs import ManagedProcess, free_port, port_open, tool_path, wait_until
from tests.support.otlp_doubles import RecordingMetrics
from tests.support.vts_double import VtsDouble

T = 1_795_000_000_000_000_000


def by_host(samples: list[CounterSample]) -> dict[str, int]:
    hosts = [s.host for s in samples]
    assert len(hosts) == len(set(hosts)), hosts
    return {s.host: s.requests for s in samples}


# ---------------------------------------------------------------------------------- stub_status

# nginx.org/en/docs/http/ngx_http_stub_status_module.html ("may look like as follows"), with the
# line breaks and trailing blanks ngx_http_stub_status_handler writes.
STUB_DOCS = (
    "Active connections: 291 \n"
    "server accepts handled requests\n"
    " 16630948 16630948 31070465 \n"
    "Reading: 6 Writing: 179 Waiting: 106 \n"
)


@pytest.mark.parametrize(
    "text",
    [
        STUB_DOCS,
        STUB_DOCS.replace("\n", "\r\n"),
        # As the docs page renders it: one line.
        "Active connections: 291 server accepts handled requests 16630948 16630948 31070465 "
        "Reading: 6 Writing: 179 Waiting: 106",
        "\n\n" + STUB_DOCS.replace(" \n", "\t\n") + "\n\n",
    ],
)
def test_stub_status_variants(text: str) -> None:
    # in_flight: Reading + Writing, the requests in progress (counted, not yet logged)
    assert parse_stub_status(text, T) == [CounterSample("*", 31070465, T, in_flight=6 + 179)]


def test_stub_status_without_the_connection_states_has_no_in_flight() -> None:
    text = "Active connections: 1\nserver accepts handled requests\n 1 1 7\n"
    assert parse_stub_status(text, T) == [CounterSample("*", 7, T)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<html><body>404 Not Found</body></html>", "stub_status page"),
        ("", "stub_status page"),
        ("Active connections: 1\nserver accepts handled requests\n 1 1 x2\n", "'requests'"),
        ("Active connections: 1\nserver accepts handled requests\n 1 -1 2\n", "'handled'"),
    ],
)
def test_stub_status_rejects(text: str, expected: str) -> None:
    with pytest.raises(CounterFormatError, match=expected):
        parse_stub_status(text, T)


@dataclass
class Nginx:
    base_url: str
    status_url: str


@pytest.fixture
def stub_nginx(tmp_path: Path) -> Iterator[Nginx]:
    """Debian's nginx, non-root, on a free loopback port; everything it writes in tmp_path."""
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""\
worker_processes 1;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        server_name counters-test;
        location = /stub_status {{ stub_status; access_log off; }}
        location = /missing {{ return 404; }}
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    argv = [
        nginx_binary(), "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log"),
        "-g", f"daemon off; pid {prefix}/nginx.pid;",
    ]
    nginx = ManagedProcess("nginx", argv, tmp_path)
    try:
        nginx.start().wait_ready(lambda: port_open(port), timeout=30)
        yield Nginx(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/stub_status")
    finally:
        nginx.stop()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_stub_status_counts_requests_of_real_nginx(stub_nginx: Nginx) -> None:
    def scrape(client: httpx.Client) -> CounterSample:
        resp = client.get(stub_nginx.status_url)
        assert resp.status_code == 200
        (sample,) = parse_stub_status(resp.text, time.time_ns())
        assert sample.host == "*" and sample.start_time_unix_nano is None
        return sample

    n = 7
    with httpx.Client(timeout=10) as client:
        first = scrape(client)
        # The status request is counted when it is read, before the page is written: two
        # scrapes in a row differ by one.
        assert scrape(client).requests - first.requests == 1
        before = scrape(client)
        for i in range(n):
            assert client.get(f"{stub_nginx.base_url}/r{i}").status_code == 200
        assert client.get(f"{stub_nginx.base_url}/missing").status_code == 404
        # A fresh connection per request counts the same: requests, not connections.
        for _ in range(2):
            assert httpx.get(f"{stub_nginx.base_url}/", timeout=10).status_code == 200
        after = scrape(client)
        raw = client.get(stub_nginx.status_url).text
    # 7 + the 404 + 2 fresh connections + the scrape itself.
    assert after.requests - before.requests == n + 1 + 2 + 1
    assert after.time_unix_nano > before.time_unix_nano
    # What the real page looks like: the handler's layout, trailing blanks included.
    lines = raw.split("\n")
    assert lines[0].startswith("Active connections: ") and lines[0].endswith(" ")
    assert lines[1] == "server accepts handled requests"
    assert lines[2].startswith(" ") and lines[2].endswith(" ")
    assert parse_stub_status(raw, T)[0].requests == int(lines[2].split()[2])


# ------------------------------------------------------------------------------------ VTS JSON

# Laid out as src/ngx_http_vhost_traffic_status_display_json.h writes it (JSON_FMT_MAIN and the
# NGX_HTTP_CACHE variant of JSON_FMT_SERVER), values made up; key list documented in
# https://github.com/vozlt/nginx-module-vts/blob/master/README.md#json-used-by-status and
# https://github.com/vozlt/nginx-module-vts/blob/master/src/ngx_http_vhost_traffic_status_display_json.h
VTS_ZONE = (
    '{"requestCounter":%d,"inBytes":1200,"outBytes":53000,'
    '"responses":{"1xx":0,"2xx":%d,"3xx":0,"4xx":%d,"5xx":0,"miss":0,"bypass":0,"expired":0,'
    '"stale":0,"updating":0,"revalidated":0,"hit":0,"scarce":0},'
    '"requestMsecCounter":12,"requestMsec":0,"requestMsecs":{"times":[1700000059000],'
    '"msecs":[0]},"requestBuckets":{"msecs":[],"counters":[]},'
    '"overCounts":{"maxIntegerSize":18446744073709551615,"requestCounter":0,"inBytes":0,'
    '"outBytes":0,"1xx":0,"2xx":0,"3xx":0,"4xx":0,"5xx":0,"miss":0,"bypass":0,"expired":0,'
    '"stale":0,"updating":0,"revalidated":0,"hit":0,"scarce":0,"requestMsecCounter":0}}'
)
VTS_JSON = (
    '{"hostName":"web-1","moduleVersion":"v0.2.2","nginxVersion":"1.22.1",'
    '"loadMsec":1700000000000,"nowMsec":1700000060000,'
    '"connections":{"active":1,"reading":0,"writing":1,"waiting":0,"accepted":9,"handled":9,'
    '"requests":43},'
    '"sharedZones":{"name":"ngx_http_vhost_traffic_status","maxSize":1048575,"usedSize":3510,'
    '"usedNode":2},'
    '"serverZones":{'
    '"example.org":' + VTS_ZONE % (40, 38, 2) + ","
    '"_":' + VTS_ZONE % (2, 2, 0) + ","
    '"*":' + VTS_ZONE % (42, 40, 2) + "},"
    '"upstreamZones":{}}'
)
# An older release (v0.1.x): no moduleVersion, no buckets, no overCounts, pretty-printed.
VTS_JSON_OLD = """{
    "hostName": "web-2",
    "nginxVersion": "1.10.3",
    "loadMsec": 1500000000000,
    "nowMsec": 1500000001000,
    "connections": {"active": 1, "reading": 0, "writing": 1, "waiting": 0,
                    "accepted": 3, "handled": 3, "requests": 5},
    "serverZones": {
        "localhost": {"requestCounter": 5, "inBytes": 10, "outBytes": 20,
                      "responses": {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 0, "5xx": 0}},
        "*": {"requestCounter": 5, "inBytes": 10, "outBytes": 20,
              "responses": {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 0, "5xx": 0}}
    }
}
"""


def test_vts_json_current_layout() -> None:
    samples = parse_vts_json(VTS_JSON, T)
    assert samples == [
        CounterSample("example.org", 40, T),
        CounterSample("_", 2, T),
        CounterSample("*", 42, T),
    ]
    # loadMsec moves on every reload while the counters live on: never a start time.
    assert all(s.start_time_unix_nano is None for s in samples)


@pytest.mark.parametrize(
    "data",
    [
        VTS_JSON.encode(),
        "\ufeff" + VTS_JSON + "\r\n",
        # /status/format/jsonp with the default and a custom callback.
        f"ngx_http_vhost_traffic_status_jsonp_callback({VTS_JSON})",
        f"cb.update ( {VTS_JSON} );\n",
    ],
)
def test_vts_json_wrappings(data: str | bytes) -> None:
    assert by_host(parse_vts_json(data, T)) == {"example.org": 40, "_": 2, "*": 42}


def test_vts_json_older_release_and_escaped_zone_names() -> None:
    assert by_host(parse_vts_json(VTS_JSON_OLD.replace("\n", "\r\n"), T)) == {
        "localhost": 5, "*": 5,
    }
    escaped = '{"serverZones":{"a\\"b\\\\c":{"requestCounter":3},"\\u00e9t\\u00e9.fr":' \
              '{"requestCounter":4.0},"*":{"requestCounter":7}}}'
    assert by_host(parse_vts_json(escaped, T)) == {'a"b\\c': 3, "été.fr": 4, "*": 7}


def test_vts_json_adds_wrapped_counts_back() -> None:
    # A 32-bit build: requestCounter wrapped twice past 4294967295.
    doc = ('{"serverZones":{"big":{"requestCounter":5,"overCounts":'
           '{"maxIntegerSize":4294967295,"requestCounter":2}}}}')
    assert parse_vts_json(doc, T) == [CounterSample("big", 2 * 4294967296 + 5, T)]


def test_vts_json_without_zones_yet() -> None:
    fresh = '{"hostName":"h","nginxVersion":"1.22.1","loadMsec":1,"nowMsec":2,"connections":{}}'
    assert parse_vts_json(fresh, T) == []
    assert parse_vts_json('{"hostName":"h","serverZones":{}}', T) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("<html>502 Bad Gateway</html>", "VTS JSON"),
        ("", "VTS JSON"),
        ("[1, 2]", "VTS JSON object"),
        ('{"status": "ok"}', "serverZones"),
        ('{"serverZones": []}', "serverZones to be an object"),
        ('{"serverZones": {"a": 5}}', "requestCounter"),
        ('{"serverZones": {"a": {"inBytes": 5}}}', "requestCounter"),
        ('{"serverZones": {"a": {"requestCounter": "12"}}}', "number"),
        ('{"serverZones": {"a": {"requestCounter": "many"}}}', "number"),
        ('{"serverZones": {"a": {"requestCounter": null}}}', "number"),
        ('{"serverZones": {"a": {"requestCounter": true}}}', "request count"),
        ('{"serverZones": {"a": {"requestCounter": -1}}}', "non-negative"),
        ('{"serverZones": {"a": {"requestCounter": 1.5}}}', "whole"),
    ],
)
def test_vts_json_rejects(data: str, expected: str) -> None:
    with pytest.raises(CounterFormatError, match=expected) as info:
        parse_vts_json(data, T)
    assert "got" in str(info.value)


def test_vts_json_error_message_shows_a_short_excerpt() -> None:
    with pytest.raises(CounterFormatError) as info:
        parse_vts_json("<html>" + "x" * 5000 + "</html>", T)
    message = str(info.value)
    assert message.startswith("expected VTS JSON") and "<html>xxx" in message
    assert len(message) < 200


# ------------------------------------------------------------------------------ VTS Prometheus

# Laid out as src/ngx_http_vhost_traffic_status_display_prometheus.h writes it at
# https://github.com/vozlt/nginx-module-vts/blob/87d7de91599e4d4452c730dc70d60fd89145bfb7/src/ngx_http_vhost_traffic_status_display_prometheus.h
# (PROMETHEUS_FMT_MAIN, _SERVER_S, _SERVER; the sum zone "*" last), values made up. That release
# writes the per-class codes only.
VTS_PROM = """\
# HELP nginx_vts_info Nginx info
# TYPE nginx_vts_info gauge
nginx_vts_info{hostname="web-1",module_version="v0.2.2",version="1.22.1"} 1
# HELP nginx_vts_start_time_seconds Nginx start time
# TYPE nginx_vts_start_time_seconds gauge
nginx_vts_start_time_seconds 1700000000.000
# HELP nginx_vts_main_connections Nginx connections
# TYPE nginx_vts_main_connections gauge
nginx_vts_main_connections{status="accepted"} 9
nginx_vts_main_connections{status="requests"} 43
# HELP nginx_vts_server_bytes_total The request/response bytes
# TYPE nginx_vts_server_bytes_total counter
# HELP nginx_vts_server_requests_total The requests counter
# TYPE nginx_vts_server_requests_total counter
# HELP nginx_vts_server_request_seconds_total The request processing time in seconds
# TYPE nginx_vts_server_request_seconds_total counter
# HELP nginx_vts_server_request_seconds The average of request processing times in seconds
# TYPE nginx_vts_server_request_seconds gauge
nginx_vts_server_bytes_total{host="example.org",direction="in"} 1200
nginx_vts_server_bytes_total{host="example.org",direction="out"} 53000
nginx_vts_server_requests_total{host="example.org",code="1xx"} 0
nginx_vts_server_requests_total{host="example.org",code="2xx"} 38
nginx_vts_server_requests_total{host="example.org",code="3xx"} 0
nginx_vts_server_requests_total{host="example.org",code="4xx"} 2
nginx_vts_server_requests_total{host="example.org",code="5xx"} 0
nginx_vts_server_request_seconds_total{host="example.org"} 0.012
nginx_vts_server_request_seconds{host="example.org"} 0.000
nginx_vts_server_requests_total{host="*",code="1xx"} 0
nginx_vts_server_requests_total{host="*",code="2xx"} 38
nginx_vts_server_requests_total{host="*",code="3xx"} 0
nginx_vts_server_requests_total{host="*",code="4xx"} 2
nginx_vts_server_requests_total{host="*",code="5xx"} 0
"""
# Older releases also wrote code="total" (same header file at
# https://github.com/vozlt/nginx-module-vts/blob/0aa14b21ef69480ebf7d93ddfe40e00ed53f2d9a/src/ngx_http_vhost_traffic_status_display_prometheus.h);
# here the total deliberately differs from the classes' sum (a response without a 1xx..5xx
# status is in requestCounter only), to show the total wins.
VTS_PROM_OLD = """\
# HELP nginx_vts_info nginx info
# TYPE nginx_vts_info gauge
nginx_vts_info{hostname="web-2",version="1.13.1"} 1
# HELP nginx_vts_server_requests_total requests counter
# TYPE nginx_vts_server_requests_total counter
nginx_vts_server_requests_total{host="_",code="1xx"} 0
nginx_vts_server_requests_total{host="_",code="2xx"} 32
nginx_vts_server_requests_total{host="_",code="3xx"} 0
nginx_vts_server_requests_total{host="_",code="4xx"} 1
nginx_vts_server_requests_total{host="_",code="5xx"} 0
nginx_vts_server_requests_total{host="_",code="total"} 34
nginx_vts_server_requests_total{host="*",code="1xx"} 0
nginx_vts_server_requests_total{host="*",code="2xx"} 32
nginx_vts_server_requests_total{host="*",code="3xx"} 0
nginx_vts_server_requests_total{host="*",code="4xx"} 1
nginx_vts_server_requests_total{host="*",code="5xx"} 0
nginx_vts_server_requests_total{host="*",code="total"} 34
"""


def test_vts_prometheus_current_layout_sums_the_classes() -> None:
    assert parse_vts_prometheus(VTS_PROM, T) == [
        CounterSample("example.org", 40, T),
        CounterSample("*", 40, T),
    ]


def test_vts_prometheus_older_layout_uses_the_total() -> None:
    assert by_host(parse_vts_prometheus(VTS_PROM_OLD, T)) == {"_": 34, "*": 34}


def test_vts_prometheus_liberal_in_layout() -> None:
    text = "\r\n".join(
        [
            "",
            "# a comment nginx_vts_server_requests_total{host=\"ignored\"} 99",
            '  nginx_vts_server_requests_total{code="2xx",host="b.example"} 5   ',
            # Extra labels (a relabelling proxy, federation), spaces, a trailing comma.
            'nginx_vts_server_requests_total{ instance="x:1" , host = "b.example", code="4xx", } 1',
            # Escapes as VTS writes them: \" \\ \n, and \\xHH for a byte that is not UTF-8.
            'nginx_vts_server_requests_total{host="we\\"ird\\\\h\\nost\\\\xFF",code="2xx"} 2',
            # A timestamp (VTS writes none; ignored) and float spellings of whole numbers.
            'nginx_vts_server_requests_total{host="c",code="2xx"} 1e3 1700000000000',
            'nginx_vts_server_requests_total{host="c",code="5xx"} 2.0',
            # Not our metric, though the name starts the same.
            'nginx_vts_server_requests_total_bogus{host="c",code="2xx"} 77',
            'nginx_vts_server_request_seconds_total{host="c"} 0.5',
            # A series without code counts as the total.
            'nginx_vts_server_requests_total{host="d"} 9',
            "# EOF",
            "",
        ]
    )
    assert by_host(parse_vts_prometheus(text, T)) == {
        "b.example": 6,
        'we"ird\\h\nost\\xFF': 2,
        "c": 1002,
        "d": 9,
    }


def test_vts_prometheus_without_zones_yet() -> None:
    # VTS always writes its main section; a fresh instance may have no server lines.
    fresh = VTS_PROM.split("# HELP nginx_vts_server_bytes_total")[0]
    assert parse_vts_prometheus(fresh, T) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<html>404</html>", r"nginx_vts_\* metrics"),
        ("", r"nginx_vts_\* metrics"),
        ("# HELP up\nup 1\n", r"nginx_vts_\* metrics"),
        # The exposition syntax is prometheus_client's parser's: its refusals name the line.
        ('nginx_vts_server_requests_total{host="a",code="2xx"} many', "<value>.*many"),
        ('nginx_vts_server_requests_total{host="a",code="2xx"} NaN', "finite"),
        ('nginx_vts_server_requests_total{host="a",code="2xx"} +Inf', "finite"),
        ('nginx_vts_server_requests_total{host="a",code="2xx"} 1.5', "whole"),
        ('nginx_vts_server_requests_total{host="a",code="2xx"} -3', "non-negative"),
        ('nginx_vts_server_requests_total{host="a",code="2xx"} 1_000', "Invalid value"),
        ('nginx_vts_server_requests_total{host="a",code="2xx"}', "<value>"),
        ('nginx_vts_server_requests_total{host="a",code="2xx"} 1 2 3', "<value>"),
        ('nginx_vts_server_requests_total{code="2xx"} 1', "host label"),
        ('nginx_vts_server_requests_total{host=a,code="2xx"} 1', "labels"),
        ('nginx_vts_server_requests_total{host="a,code="2xx"} 1', "<value>"),
        ('nginx_vts_server_requests_total{host="a",code="2xx" 1', "<value>"),
        ('nginx_vts_server_requests_total{host="a" code="2xx"} 1', "Invalid labels"),
        (
            'nginx_vts_server_requests_total{host="a",code="2xx"} 1\n'
            'nginx_vts_server_requests_total{code="2xx",host="a",instance="b"} 1',
            "one nginx_vts_server_requests_total series per host and code",
        ),
        ('nginx_vts_server_requests_total{host="a",code="200"} 1', 'code="total"'),
    ],
)
def test_vts_prometheus_rejects(text: str, expected: str) -> None:
    with pytest.raises(CounterFormatError, match=expected):
        parse_vts_prometheus(text, T)


# ------------------------------------------------------------------------------ the VTS double


def test_vts_double_pages_parse_the_same_way() -> None:
    with VtsDouble() as vts, VtsDouble(with_total=True) as old:
        for double in (vts, old):
            double.set("example.org", 40, classes={"2xx": 38, "4xx": 2})
            double.set('q"uote', 3)
        expected = {"example.org": 40, 'q"uote': 3, "*": 43}
        assert vts.totals() == expected
        for double in (vts, old):
            prom = httpx.get(double.url("/status/format/prometheus"), timeout=5)
            assert prom.headers["content-type"] == "text/plain"
            assert by_host(parse_vts_prometheus(prom.text, T)) == expected
            js = httpx.get(double.url("/status/format/json"), timeout=5)
            assert js.headers["content-type"] == "application/json"
            assert by_host(parse_vts_json(js.content, T)) == expected
        assert 'code="total"} 43' in httpx.get(old.url(), timeout=5).text
        assert 'code="total"' not in httpx.get(vts.url(), timeout=5).text
        assert httpx.get(vts.url("/status"), timeout=5).status_code == 404
        vts.set("example.org", 1)  # a reset
        vts.remove('q"uote')
        assert by_host(parse_vts_prometheus(httpx.get(vts.url(), timeout=5).text, T)) == {
            "example.org": 1, "*": 1,
        }
        assert vts.scrapes["/status/format/prometheus"] == 3
    with pytest.raises(ValueError):
        VtsDouble().set("a", 3, classes={"2xx": 2})


# ----------------------------------------------------------------------------------------- OTLP


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def point(
    host: str | None,
    code: str | None,
    value: float | int,
    time_unix_nano: int = T,
    start: int = 0,
    flags: int = 0,
) -> metrics_pb2.NumberDataPoint:
    attrs = [_kv(k, v) for k, v in (("code", code), ("host", host)) if v is not None]
    p = metrics_pb2.NumberDataPoint(
        attributes=attrs, time_unix_nano=time_unix_nano, start_time_unix_nano=start, flags=flags
    )
    if isinstance(value, int):
        p.as_int = value
    else:
        p.as_double = value
    return p


def sum_metric(
    points: list[metrics_pb2.NumberDataPoint], name: str = METRIC_NAMES[0]
) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(
        name=name,
        sum=metrics_pb2.Sum(
            data_points=points,
            aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
            is_monotonic=True,
        ),
    )


def otlp_request(*resources: list[metrics_pb2.Metric]) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for i, metrics in enumerate(resources):
        rm = req.resource_metrics.add()
        rm.resource.attributes.append(_kv("service.instance.id", f"nginx-{i}:80"))
        rm.scope_metrics.add().metrics.extend(metrics)
    return req


def classes(host: str, counts: dict[str, float | int], **kw: int) -> list:
    return [point(host, code, value, **kw) for code, value in counts.items()]


def test_otlp_sums_classes_and_keeps_time_and_start() -> None:
    start = T - 60_000_000_000
    req = otlp_request(
        [
            metrics_pb2.Metric(name="nginx_vts_server_bytes_total"),
            sum_metric(
                classes("example.org", {"1xx": 0.0, "2xx": 38.0, "3xx": 0.0, "4xx": 2.0,
                                        "5xx": 0.0}, start=start)
                + classes("*", {"2xx": 38, "4xx": 2}, start=start)
            ),
        ]
    )
    assert samples_from_otlp(req) == [
        CounterSample("example.org", 40, T, start),
        CounterSample("*", 40, T, start),
    ]


def test_otlp_total_trimmed_name_gauge_and_unknown_start() -> None:
    req = otlp_request(
        [
            sum_metric(
                classes("_", {"2xx": 32, "4xx": 1, "total": 34}), "nginx_vts_server_requests"
            ),
            metrics_pb2.Metric(
                name=METRIC_NAMES[0],
                gauge=metrics_pb2.Gauge(data_points=[point("g", None, 7.0)]),
            ),
        ]
    )
    assert samples_from_otlp(req) == [
        CounterSample("_", 34, T, None),  # start 0 = unknown
        CounterSample("g", 7, T, None),
    ]


def test_otlp_keeps_scrapes_and_instances_apart() -> None:
    later = T + 1_000_000_000
    req = otlp_request(
        [sum_metric(classes("a", {"2xx": 5}) + classes("a", {"2xx": 1}, time_unix_nano=later,
                                                        start=later))],
        [sum_metric(classes("a", {"2xx": 100}))],
    )
    assert samples_from_otlp(req) == [
        CounterSample("a", 5, T),
        CounterSample("a", 1, later, later),  # a new start: the counter was reset
        CounterSample("a", 100, T),  # another nginx: never summed with the first
    ]


def test_otlp_skips_staleness_markers_and_other_metrics() -> None:
    stale = metrics_pb2.DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
    req = otlp_request(
        [
            sum_metric(classes("gone", {"2xx": math.nan}, flags=stale)),
            sum_metric(classes("a", {"2xx": 3}), name="nginx_vts_upstream_requests_total"),
        ]
    )
    assert samples_from_otlp(req) == []
    assert samples_from_otlp(ExportMetricsServiceRequest()) == []


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([point("a", "2xx", math.nan)], "finite"),
        ([point("a", "2xx", 2.5)], "whole"),
        ([point("a", "2xx", -1)], "non-negative"),
        ([point(None, "2xx", 1)], "host attribute"),
        ([point("a", "2xx", 1), point("a", "2xx", 2)], "one nginx_vts_server_requests_total"),
        ([point("a", "200", 1)], 'code="total"'),
        ([metrics_pb2.NumberDataPoint(attributes=[_kv("host", "a")])], "as_int or as_double"),
    ],
)
def test_otlp_rejects(points: list, expected: str) -> None:
    with pytest.raises(CounterFormatError, match=expected):
        samples_from_otlp(otlp_request([sum_metric(points)]))


def test_otlp_rejects_a_histogram_of_that_name() -> None:
    metric = metrics_pb2.Metric(name=METRIC_NAMES[0], histogram=metrics_pb2.Histogram())
    with pytest.raises(CounterFormatError, match="a Sum"):
        samples_from_otlp(otlp_request([metric]))


# ---------------------------------------------------------------- the real collector, over OTLP


def _collector_config(path: Path, target: str, endpoint: str) -> Path:
    config = {
        "receivers": {
            "prometheus": {
                "config": {
                    "scrape_configs": [
                        {
                            "job_name": "nginx-vts",
                            "scrape_interval": "1s",
                            "metrics_path": "/status/format/prometheus",
                            "static_configs": [{"targets": [target]}],
                        }
                    ]
                }
            }
        },
        "exporters": {"otlp_grpc": {"endpoint": endpoint, "tls": {"insecure": True}}},
        "service": {
            "pipelines": {"metrics": {"receivers": ["prometheus"], "exporters": ["otlp_grpc"]}},
            "telemetry": {"metrics": {"level": "none"}},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_real_collector_scraping_vts_reaches_samples_from_otlp(tmp_path: Path) -> None:
    otelcol = tool_path("otelcol-audit-guard")  # no skip: a missing collector is a failure
    with VtsDouble() as vts, RecordingMetrics() as recorder:
        target = vts.target
        vts.set("example.org", 40, classes={"2xx": 37, "4xx": 2, "5xx": 1})
        vts.set('api "v1"', 2)
        config = _collector_config(tmp_path / "collector.yaml", vts.target, recorder.endpoint)
        collector = ManagedProcess("collector", [otelcol, "--config", config], tmp_path)
        collector.start()
        try:

            def samples() -> list[CounterSample]:
                assert collector.proc is not None and collector.proc.poll() is None, (
                    collector.tail()
                )
                return [s for r in recorder.snapshot() for s in samples_from_otlp(r)]

            def latest(expected: dict[str, int]) -> bool:
                found = samples()
                if not found:
                    return False
                newest = max(s.time_unix_nano for s in found)
                return by_host([s for s in found if s.time_unix_nano == newest]) == expected

            # Prometheus applies discovered targets every 5 s: the first scrape takes a while.
            wait_until(lambda: latest({"example.org": 40, 'api "v1"': 2, "*": 42}), 40,
                       "the first scrape over OTLP")
            first_time = max(s.time_unix_nano for s in samples())
            vts.set("example.org", 45, classes={"2xx": 42, "4xx": 2, "5xx": 1})
            wait_until(lambda: latest({"example.org": 45, 'api "v1"': 2, "*": 47}), 20,
                       "the grown counter over OTLP")
            vts.set("example.org", 3)  # nginx restarted: the counter starts again
            wait_until(lambda: latest({"example.org": 3, 'api "v1"': 2, "*": 5}), 20,
                       "the reset counter over OTLP")
        finally:
            collector.stop()
        requests = recorder.snapshot()

    found = [s for r in requests for s in samples_from_otlp(r)]
    assert max(s.time_unix_nano for s in found) > first_time
    # Times are the scrape times (ms precision), one per scrape for all hosts.
    for s in found:
        assert s.time_unix_nano % 1_000_000 == 0
        assert abs(s.time_unix_nano - time.time_ns()) < 300 * 10**9
    # The collector 0.160 prometheus receiver sends no start time (0) for these counters, and
    # its build has no metricstarttime processor: resets show only as the counter going down.
    assert {s.start_time_unix_nano for s in found} == {None}

    # What exactly the receiver sent: name, type, attributes, value kind, resource.
    metrics = [
        (rm, m)
        for r in requests
        for rm in r.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name.startswith("nginx_vts_server_requests")
    ]
    assert {m.name for _, m in metrics} == {"nginx_vts_server_requests_total"}
    for rm, m in metrics:
        assert m.WhichOneof("data") == "sum"
        assert m.sum.is_monotonic
        assert m.sum.aggregation_temporality == metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        for p in m.sum.data_points:
            assert {kv.key for kv in p.attributes} == {"host", "code"}
            assert p.WhichOneof("value") == "as_double"
        resource = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
        assert resource["service.name"] == "nginx-vts"
        assert resource["service.instance.id"] == target
