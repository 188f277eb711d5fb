"""Counter-level reconciliation: nginx's own request counters against the access-log records
that reached audit-guard, per server zone.

nginx counts every request it serves, whether or not an access-log line is written, reaches the
collector and survives the trip. Between two readings of a counter (VTS
`nginx_vts_server_requests_total{host}`, VTS JSON `serverZones.<zone>.requestCounter`, or
stub_status `requests` for all zones together) the increase is the number of requests served;
the access-log records received for that zone whose time ($msec, the log write) falls in the
same interval should match it. The shortfall is counted as missing nginx records.

- An interval is compared only `settle_s` after it closed: records still on their way through
  the collector count in it.
- A request at a boundary can land on either side (nginx's clock vs the reading's): a shortfall
  is counted only when it outlasts the next interval too (the running shortfall is counted at
  the smaller of two consecutive values), and counted once.
- A counter that went down, or whose start time changed (OTLP), was reset (nginx restart or
  reload of a VTS zone without persistence): the interval counts from zero.
- stub_status counts a request when it starts and VTS when it is logged. For stub_status the
  change in requests in progress (`Reading + Writing`, when given) is taken off, as is the
  status request audit-guard itself made (it is not in the access log: `access_log off`).
- A series with no reading for longer than the span starts afresh (its endpoint was down).
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass, field

from ..record import RecordBatch
from ..sources.nginx_counters import ALL_ZONES, CounterSample

__all__ = ["CounterReconciler", "served_by_host"]

_NS = 1_000_000_000
_MS = 1_000_000


def _ms(time_unix_nano: int) -> int:
    return time_unix_nano - time_unix_nano % _MS


def served_by_host(batch: RecordBatch, into: dict[str | None, list[int]],
                   counted: Collection[int] = ()) -> None:
    """Add the times of a checked Nginx batch's records, per server name ($server_name, which
    VTS names its zones by; else the Host), to `into`; not those of the rows `counted` before
    (records read again or resent)."""
    if len(counted) == len(batch):
        return
    names = batch.field_column("server_name")
    hosts = (names if all(names)  # the usual case: every record names its server
             else [name or a for name, a in zip(names, batch.server_address, strict=True)])
    if counted:
        skip = set(counted)
        for i, (host, t) in enumerate(zip(hosts, batch.time_unix_nano, strict=True)):
            if t and i not in skip:
                into.setdefault(host, []).append(t)
        return
    distinct = set(hosts)
    if len(distinct) == 1:
        into.setdefault(hosts[0], []).extend(filter(None, batch.time_unix_nano))
        return
    # One list and one bound append per zone, not a setdefault (and a new list) per record.
    appends = {host: into.setdefault(host, []).append for host in distinct}
    for host, t in zip(hosts, batch.time_unix_nano, strict=True):
        if t:
            appends[host](t)


@dataclass
class _Series:
    host: str
    self_requests: int  # requests per reading the reader itself adds and nginx does not log
    last: CounterSample | None = None  # the last reading already compared
    waiting: list[CounterSample] = field(default_factory=list)  # newer ones, not yet settled
    shortfall: int = 0  # running: requests served minus records logged, since the first reading
    counted: int = 0  # how much of it was counted missing
    intervals: deque[tuple[int, int, int]] = field(default_factory=deque)  # (end, exp., obs.)
    traffic_at: int | None = None  # start of the last interval in which requests were served


class CounterReconciler:
    def __init__(self, settle_s: float, span_s: float, *, count_zones: bool = False) -> None:
        self._settle = int(settle_s * _NS)
        self._span = int(span_s * _NS)
        # The records per zone are exported too (audit_nginx_records_by_zone_total, counted
        # from the same grouping by Telemetry.record_stats): behind load_balancing no instance
        # reads nginx's counters, and Prometheus compares them with the sum over instances.
        self.count_zones = count_zones
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        # Times of the access-log records received, per server name; ALL_ZONES = all of them.
        self._times: dict[str, array[int]] = {}
        self.unmatched_hosts: set[str] = set()

    @property
    def active(self) -> bool:
        """Whether the records' zones are worth collecting (`served_by_host`): a counter was
        read, or the per-zone counts are exported."""
        return self.count_zones or bool(self._series)

    def add_records(self, served: dict[str | None, list[int]]) -> None:
        """Access-log records handed on: their times (ns) per server name."""
        with self._lock:
            if not self._series:  # nothing to compare with: keep nothing
                return
            everything = self._times.setdefault(ALL_ZONES, array("q"))
            for host, times in served.items():
                everything.extend(times)
                if host:
                    self._times.setdefault(host, array("q")).extend(times)

    def add_readings(self, origin: str, readings: list[CounterSample], self_requests: int = 0
                     ) -> None:
        """Counter readings from one origin (a scraped URL, or the collector). When an origin
        reports zones, its ALL_ZONES total (VTS's "*") is not compared: it also counts the
        status server, which does not log."""
        zones = {r.host for r in readings}
        with self._lock:
            for reading in readings:
                if reading.host == ALL_ZONES and len(zones) > 1:
                    continue
                series = self._series.get((origin, reading.host))
                if series is None:
                    series = self._series[(origin, reading.host)] = _Series(
                        reading.host, self_requests)
                newest = series.waiting[-1] if series.waiting else series.last
                if newest is None or reading.time_unix_nano > newest.time_unix_nano:
                    series.waiting.append(reading)

    def evaluate(self, now_ns: int) -> dict[str, int]:
        """Compare every settled interval; returns the newly counted shortfall per host."""
        missing: Counter[str] = Counter()
        with self._lock:
            for times in self._times.values():
                if len(times) > 1:
                    times[:] = array("q", sorted(times))
            for series in self._series.values():
                while series.waiting and series.waiting[0].time_unix_nano + self._settle <= now_ns:
                    reading = series.waiting.pop(0)
                    last = series.last
                    if last is not None and (
                            reading.time_unix_nano - last.time_unix_nano > self._span):
                        last = None  # no reading for too long: start afresh
                    if last is not None:
                        missing[series.host] += self._compare(series, last, reading)
                    series.last = reading
                while series.intervals and series.intervals[0][0] < now_ns - self._span:
                    series.intervals.popleft()
            self._prune(now_ns)
        return {host: n for host, n in missing.items() if n}

    def _compare(self, series: _Series, before: CounterSample, after: CounterSample) -> int:
        reset = after.requests < before.requests or (
            before.start_time_unix_nano is not None
            and after.start_time_unix_nano is not None
            and after.start_time_unix_nano != before.start_time_unix_nano
        )
        served = after.requests if reset else after.requests - before.requests
        if after.in_flight is not None:
            served -= after.in_flight - (0 if reset or before.in_flight is None
                                         else before.in_flight)
        served = max(served - series.self_requests, 0)
        times = self._times.get(series.host)
        if times is None:
            if served:
                self.unmatched_hosts.add(series.host)
            logged = 0
        else:
            # [before, after) in whole milliseconds: $msec is the log write time cut to the
            # millisecond, so a request after a reading is logged at or after its millisecond.
            logged = (bisect_left(times, _ms(after.time_unix_nano))
                      - bisect_left(times, _ms(before.time_unix_nano)))
        previous = series.shortfall
        series.shortfall += served - logged
        lasting = min(previous, series.shortfall)  # a boundary effect is gone one interval on
        new = max(lasting - series.counted, 0)
        series.counted += new
        series.intervals.append((after.time_unix_nano, served, logged))
        if served:
            series.traffic_at = before.time_unix_nano
        return new

    def _prune(self, now_ns: int) -> None:
        """Forget record times no interval can still need."""
        lasts = [s.last.time_unix_nano for s in self._series.values() if s.last is not None]
        keep_from = max(min(lasts) if lasts else now_ns, now_ns - self._span - self._settle)
        for times in self._times.values():
            cut = bisect_left(times, _ms(keep_from))
            if cut:
                del times[:cut]

    def ratios(self) -> dict[str, float]:
        """Per host, the share of the requests nginx served (over the last span) that arrived
        as access-log records; hosts with no traffic in the span are left out."""
        out: dict[str, float] = {}
        with self._lock:
            totals: dict[str, list[int]] = {}
            for series in self._series.values():
                total = totals.setdefault(series.host, [0, 0])
                for _, served, logged in series.intervals:
                    total[0] += served
                    total[1] += logged
        for host, (served, logged) in totals.items():
            if served:
                out[host] = min(logged / served, 1.0)
        return out

    def traffic_since(self, since_ns: int) -> bool | None:
        """Whether the counters show requests served in an interval that began after
        `since_ns` (None: no counters)."""
        with self._lock:
            if not self._series:
                return None
            return any(s.traffic_at is not None and s.traffic_at > since_ns
                       for s in self._series.values())
