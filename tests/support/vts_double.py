"""Test double for nginx-module-vts's status pages — the module itself cannot be installed here
(it is not packaged in Debian and needs nginx rebuilt), so the real collector scrapes this.

`VtsDouble` is a tiny http.server on 127.0.0.1 serving

    /status/format/prometheus   text/plain, as ngx_http_vhost_traffic_status_display_prometheus.c
    /status/format/json         application/json, as ..._display_json.c

with per-zone request counters the test sets (`set(host, total)`). The layout follows the
format strings of vozlt/nginx-module-vts at commit 87d7de9 (src/*_display_prometheus.h,
src/*_display_json.h): per-class `code="1xx".."5xx"` series and, only with `with_total=True`,
the `code="total"` series of older releases; the sum zone ("*" by default) is computed from the
zones at each request, as VTS does. Host labels are escaped as VTS escapes them (`\\`, `"`,
newline).

Unlike real VTS, a scrape is not counted in any zone (VTS counts its own status request in the
zone of the server that answered it, unless `vhost_traffic_status_bypass_stats on`).

    with VtsDouble() as vts:          # started; vts.port is the port
        vts.set("example.org", 40)
        ...
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = ["CLASSES", "VtsDouble"]

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
PROMETHEUS_PATH = "/status/format/prometheus"
JSON_PATH = "/status/format/json"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class VtsDouble:
    """Serves VTS status pages with counters the test controls; see the module docstring."""

    def __init__(
        self,
        *,
        with_total: bool = False,
        sum_key: str = "*",
        hostname: str = "vts-double",
        module_version: str = "v0.2.2",
        nginx_version: str = "1.22.1",
        load_msec: int = 1_700_000_000_000,
    ) -> None:
        self.with_total = with_total
        self.sum_key = sum_key
        self.hostname = hostname
        self.module_version = module_version
        self.nginx_version = nginx_version
        self.load_msec = load_msec
        self.scrapes: dict[str, int] = {}  # path → requests served
        self._zones: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> int:
        """Listen on a free loopback port; returns it. Idempotent."""
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            self._server.daemon_threads = True
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="vts-double", daemon=True
            )
            self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5)
            self._server = self._thread = None

    def __enter__(self) -> VtsDouble:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("VtsDouble is not started")
        return self._server.server_address[1]

    @property
    def target(self) -> str:
        """host:port, as a Prometheus static target."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = PROMETHEUS_PATH) -> str:
        return f"http://{self.target}{path}"

    # ------------------------------------------------------------------------------ counters

    def set(self, host: str, total: int, *, classes: Mapping[str, int] | None = None) -> None:
        """Set zone `host`'s cumulative request count (a lower value = a reset, as after an
        nginx restart). `classes` splits it by status class (1xx..5xx, summing to total);
        by default every request is a 2xx."""
        split = dict(classes) if classes is not None else {"2xx": total}
        if set(split) - set(CLASSES) or sum(split.values()) != total or total < 0:
            raise ValueError(f"classes {split} must be among {CLASSES} and sum to {total}")
        with self._lock:
            self._zones[host] = {code: split.get(code, 0) for code in CLASSES}

    def remove(self, host: str) -> None:
        """Drop a zone (as `/status/control?cmd=delete` would)."""
        with self._lock:
            self._zones.pop(host, None)

    def totals(self) -> dict[str, int]:
        """host → total, sum zone included."""
        zones = self._snapshot()
        return {host: sum(codes.values()) for host, codes in zones.items()}

    def _snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            zones = {host: dict(codes) for host, codes in self._zones.items()}
        zones[self.sum_key] = {code: sum(z[code] for z in zones.values()) for code in CLASSES}
        return zones

    # ------------------------------------------------------------------------------- formats

    def prometheus_text(self) -> str:
        """The page as VTS's prometheus display writes it (main section, then server zones,
        the sum zone last)."""
        zones = self._snapshot()
        out = [
            "# HELP nginx_vts_info Nginx info",
            "# TYPE nginx_vts_info gauge",
            f'nginx_vts_info{{hostname="{_escape_label(self.hostname)}",'
            f'module_version="{self.module_version}",version="{self.nginx_version}"}} 1',
            "# HELP nginx_vts_start_time_seconds Nginx start time",
            "# TYPE nginx_vts_start_time_seconds gauge",
            f"nginx_vts_start_time_seconds {self.load_msec / 1000:.3f}",
            "# HELP nginx_vts_server_bytes_total The request/response bytes",
            "# TYPE nginx_vts_server_bytes_total counter",
            "# HELP nginx_vts_server_requests_total The requests counter",
            "# TYPE nginx_vts_server_requests_total counter",
            "# HELP nginx_vts_server_request_seconds_total The request processing time in seconds",
            "# TYPE nginx_vts_server_request_seconds_total counter",
            "# HELP nginx_vts_server_request_seconds The average of request processing times in"
            " seconds",
            "# TYPE nginx_vts_server_request_seconds gauge",
        ]
        for host, codes in zones.items():
            h = _escape_label(host)
            total = sum(codes.values())
            out.append(f'nginx_vts_server_bytes_total{{host="{h}",direction="in"}} {total * 100}')
            out.append(f'nginx_vts_server_bytes_total{{host="{h}",direction="out"}} {total * 500}')
            for code in CLASSES:
                out.append(f'nginx_vts_server_requests_total{{host="{h}",code="{code}"}} '
                           f"{codes[code]}")
            if self.with_total:
                out.append(f'nginx_vts_server_requests_total{{host="{h}",code="total"}} {total}')
            out.append(f'nginx_vts_server_request_seconds_total{{host="{h}"}} 0.000')
            out.append(f'nginx_vts_server_request_seconds{{host="{h}"}} 0.000')
        return "\n".join(out) + "\n"

    def json_text(self) -> str:
        """The page as VTS's JSON display writes it (compact, keys in VTS's order)."""
        zones = self._snapshot()
        requests = sum(sum(codes.values()) for host, codes in zones.items()
                       if host != self.sum_key)

        def zone(codes: dict[str, int]) -> dict[str, object]:
            total = sum(codes.values())
            return {
                "requestCounter": total,
                "inBytes": total * 100,
                "outBytes": total * 500,
                "responses": dict(codes),
                "requestMsecCounter": 0,
                "requestMsec": 0,
                "requestMsecs": {"times": [], "msecs": []},
                "requestBuckets": {"msecs": [], "counters": []},
                "overCounts": {
                    "maxIntegerSize": 18446744073709551615,
                    "requestCounter": 0,
                    "inBytes": 0,
                    "outBytes": 0,
                    **{code: 0 for code in CLASSES},
                    "requestMsecCounter": 0,
                },
            }

        doc = {
            "hostName": self.hostname,
            "moduleVersion": self.module_version,
            "nginxVersion": self.nginx_version,
            "loadMsec": self.load_msec,
            "nowMsec": self.load_msec + 60_000,
            "connections": {"active": 1, "reading": 0, "writing": 1, "waiting": 0,
                            "accepted": requests, "handled": requests, "requests": requests},
            "sharedZones": {"name": "ngx_http_vhost_traffic_status", "maxSize": 1048575,
                            "usedSize": 3510, "usedNode": len(zones) - 1},
            "serverZones": {host: zone(codes) for host, codes in zones.items()},
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)

    # ---------------------------------------------------------------------------------- http

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == PROMETHEUS_PATH:
                    body, ctype = double.prometheus_text(), "text/plain"  # VTS sends no version
                elif path == JSON_PATH:
                    body, ctype = double.json_text(), "application/json"
                else:
                    self.send_error(404)
                    return
                with double._lock:
                    double.scrapes[path] = double.scrapes.get(path, 0) + 1
                data = body.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        return Handler
