"""Silence: a source that sent records and then none for longer than a threshold while traffic
went on — a stream that stopped (a log driver that died, a rotated file no one reads any more,
pgaudit switched off) rather than a quiet hour.

What shows traffic went on: for the app and pgaudit, Nginx records (the app's: audited Nginx
requests that expect an app record); for Nginx itself, nginx's own request counters (serve
only: the CounterReconciler's `traffic_since`). The service asks with the wall clock
(audit_guard.completeness), replay with the records' own times (audit_guard.replay.engine).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["WATCHED", "SilenceWatch"]

# Sources watched for silence.
WATCHED = ("nginx", "app", "pgaudit")


class SilenceWatch:
    def __init__(self, threshold_ns: int,
                 nginx_traffic_since: Callable[[int], bool] | None = None) -> None:
        self._threshold = threshold_ns
        self._nginx_traffic_since = nginx_traffic_since
        self.last_records: dict[str, int] = {}  # source → when its records last came
        self._last_expected: int | None = None  # when audited Nginx requests last came

    def on_records(self, source: str, now_ns: int) -> None:
        self.last_records[source] = now_ns

    def on_expected(self, now_ns: int) -> None:
        """Audited Nginx requests came (they expect app records)."""
        self._last_expected = now_ns

    def silent(self, now_ns: int) -> dict[str, bool]:
        """Per watched source that has sent records: whether it has been quiet for longer than
        the threshold while traffic went on."""
        out: dict[str, bool] = {}
        for source in WATCHED:
            last = self.last_records.get(source)
            if last is None:
                continue
            if now_ns - last <= self._threshold:
                out[source] = False
                continue
            if source == "nginx":
                traffic = (self._nginx_traffic_since is not None
                           and self._nginx_traffic_since(last))
            elif source == "app":
                traffic = self._last_expected is not None and self._last_expected > last
            else:
                nginx_last = self.last_records.get("nginx")
                traffic = nginx_last is not None and nginx_last > last
            out[source] = bool(traffic)
        return out
