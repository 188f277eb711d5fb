"""Counter-level reconciliation: nginx's own request counters against the access-log records
that reached audit-guard, per server zone.

nginx counts every request it serves, whether or not an access-log line is written, reaches the
collector and survives the trip. Between two readings of a counter (VTS
`nginx_vts_server_requests_total{host}`, VTS JSON `serverZones.<zone>.requestCounter`, or
stub_status `requests` for all zones together) the increase is the number of requests served;
the access-log records received for that zone whose time falls in the same interval should
match it. The shortfall is counted as missing nginx records.

- An interval is compared only `settle_ns` after it closed: records still on their way through
  the collector count in it.
- Records are bucketed per second of their own time ($msec, the log write), so boundaries are
  fuzzy by up to a second: a surplus in one interval (a request counted in the previous one)
  offsets the next interval's shortfall, and never more than its own size.
- A counter that went down, or whose start time changed (OTLP), was reset (nginx restart or
  reload of a VTS zone without persistence): the interval counts from zero.
- stub_status counts a request when it starts and VTS when it is logged. For stub_status the
  change in requests in progress (`Reading + Writing`, when given) is taken off, as is the
  status request audit-guard itself made (it is not in the access log: `access_log off`).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

__all__ = ["ALL_ZONES", "CounterReconciler", "Reading"]

ALL_ZONES = "*"
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a request counter."""

    host: str  # server zone (server_name); ALL_ZONES for every zone together
    requests: int
    time_unix_nano: int
    start_time_unix_nano: int | None = None
    in_flight: int | None = None  # requests in progress (stub_status Reading + Writing)


@dataclass
class _Series:
    host: str
    self_requests: int  # requests per reading the reader itself adds and nginx does not log
    last: Reading | None = None  # the last reading already compared
    waiting: list[Reading] = field(default_factory=list)  # newer readings, not yet settled
    balance: int = 0  # shortfall (>0) or surplus (<0) carried to the next interval
    intervals: deque[tuple[int, int, int]] = field(default_factory=deque)  # (end, exp., obs.)
    traffic_at: int | None = None  # end of the last interval in which requests were served


class CounterReconciler:
    def __init__(self, settle_s: float, span_s: float) -> None:
        self._settle = int(settle_s * _NS)
        self._span = int(span_s * _NS)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        # Access-log records received, per host and second of their time; ALL_ZONES = all.
        self._served: dict[str, Counter[int]] = {}
        self.unmatched_hosts: set[str] = set()

    def add_records(self, served: Counter[tuple[str | None, int | None]]) -> None:
        """Access-log records handed on: counts per (server name, second of their time)."""
        with self._lock:
            everything = self._served.setdefault(ALL_ZONES, Counter())
            for (host, second), n in served.items():
                if second is None:
                    continue
                everything[second] += n
                if host:
                    self._served.setdefault(host, Counter())[second] += n

    def add_readings(self, origin: str, readings: list[Reading], self_requests: int = 0) -> None:
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
        """Compare every settled interval; returns the new shortfall per host."""
        missing: Counter[str] = Counter()
        with self._lock:
            for series in self._series.values():
                while series.waiting and series.waiting[0].time_unix_nano + self._settle <= now_ns:
                    reading = series.waiting.pop(0)
                    if series.last is not None:
                        missing[series.host] += self._compare(series, series.last, reading)
                    series.last = reading
                while series.intervals and series.intervals[0][0] < now_ns - self._span:
                    series.intervals.popleft()
            self._prune(now_ns)
        return {host: n for host, n in missing.items() if n}

    def _compare(self, series: _Series, before: Reading, after: Reading) -> int:
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
        counts = self._served.get(series.host)
        if counts is None and served:
            self.unmatched_hosts.add(series.host)
        first, last = before.time_unix_nano // _NS, after.time_unix_nano // _NS
        logged = sum(counts.get(s, 0) for s in range(first + 1, last + 1)) if counts else 0
        balance = series.balance + served - logged
        shortfall = max(balance, 0)
        # A surplus offsets at most one interval's worth of a later shortfall.
        series.balance = max(min(balance, 0), -logged)
        series.intervals.append((after.time_unix_nano, served, logged))
        if served:
            series.traffic_at = after.time_unix_nano
        return shortfall

    def _prune(self, now_ns: int) -> None:
        """Forget per-second counts no interval can still need."""
        oldest = [s.last.time_unix_nano for s in self._series.values() if s.last is not None]
        keep_from = (min(oldest) if oldest else now_ns - self._span - self._settle) // _NS
        for counts in self._served.values():
            for second in [s for s in counts if s <= keep_from - 1]:
                del counts[second]

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
        """Whether the counters show requests served after `since_ns` (None: no counters)."""
        with self._lock:
            if not self._series:
                return None
            return any(s.traffic_at is not None and s.traffic_at > since_ns
                       for s in self._series.values())
