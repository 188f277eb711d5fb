"""Membership changes of the scale-out ring, and the grace period after one.

Behind the collector's `load_balancing` exporter each trace id belongs to one instance on a
consistent-hash ring. When an instance is added or removed about 1/N of the trace ids move: a
request whose Nginx record was routed before the change and whose app record after it (or the
other way round) has its two records on two instances, and the one holding the Nginx record
would report a false `missing_record` (docs/scale-out.md#membership-changes).

An instance learns of a change in two ways:

- `poll`: the DNS name the collector's `dns` resolver (or the `k8s` resolver's headless
  Service) resolves — reconcile.membership_dns — is resolved every membership_poll_s; a
  different set of addresses is a change. The first answer is the starting set, not a change;
  a failed resolution is logged and changes nothing (DNS down is not a ring change).
- `changed`: called by POST /api/membership-change (the static resolver: the operator calls
  it on every instance when editing the list).

`split` then keeps back every due request whose Nginx record was logged within `grace_s` before
or after a change: the caller counts it (audit_missing_suppressed_total) instead of reporting
it. A change stays open until `grace_s + keep_s` after it (keep_s: the window and the holds
that can delay a report), then `expire` logs once how many it suppressed and forgets it.
Outside those periods nothing is kept back. The cost is per due request, not per record.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .missing import Due

__all__ = ["Change", "MembershipWatch", "Resolver", "resolve_addresses"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_MAX_OPEN = 1000  # a flapping DNS answer must not grow the list without bound

# A DNS name → the set of addresses it resolves to (raises OSError when it cannot).
Resolver = Callable[[str], frozenset[str]]


def resolve_addresses(name: str) -> frozenset[str]:
    """The addresses `name` resolves to, as the collector's dns resolver sees them (A/AAAA)."""
    return frozenset(str(info[4][0]) for info in socket.getaddrinfo(
        name, None, proto=socket.IPPROTO_TCP))


@dataclass
class Change:
    at_ns: int
    trigger: str  # dns | api
    detail: str
    suppressed: int = 0


class MembershipWatch:
    def __init__(self, grace_s: float, keep_s: float, *, dns_name: str | None = None,
                 poll_s: float = 5.0, resolver: Resolver = resolve_addresses) -> None:
        self.grace_s = grace_s
        self._grace = int(grace_s * _NS)
        self._keep = int(keep_s * _NS)
        self.dns_name = dns_name
        self._poll_s = poll_s
        self._resolver = resolver
        self._lock = threading.Lock()
        self._open: list[Change] = []  # oldest first
        self.addresses: frozenset[str] | None = None  # the last set resolved
        self.last_change: Change | None = None
        self.suppressed_total = 0
        self._failing = False  # resolution failing: logged once per streak
        self.on_change: Callable[[Change], None] | None = None  # Completeness counts it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- learning of a change --------------------------------------------------------------
    def poll(self, now_ns: int) -> Change | None:
        """Resolve membership_dns once; the change, when its set of addresses changed."""
        if self.dns_name is None:
            return None
        try:
            found = self._resolver(self.dns_name)
        except OSError as exc:
            if not self._failing:
                log.warning("reconcile.membership_dns=%s does not resolve (%s): membership "
                            "changes are not noticed until it does", self.dns_name, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("reconcile.membership_dns=%s resolves again", self.dns_name)
            self._failing = False
        before, self.addresses = self.addresses, found
        if before is None or found == before:
            return None
        added, removed = sorted(found - before), sorted(before - found)
        return self.changed(now_ns, "dns", f"{self.dns_name}: added {added or 'none'}, "
                                           f"removed {removed or 'none'}")

    def changed(self, now_ns: int, trigger: str, detail: str = "") -> Change:
        change = Change(now_ns, trigger, detail)
        with self._lock:
            self._open.append(change)
            del self._open[:-_MAX_OPEN]
            self.last_change = change
        log.warning("membership change (%s%s): for %.0f s either side of it, requests without "
                    "their app record are counted in audit_missing_suppressed_total instead of "
                    "reported missing_record", trigger, f": {detail}" if detail else "",
                    self.grace_s)
        if self.on_change is not None:
            self.on_change(change)
        return change

    # -- the grace period ------------------------------------------------------------------
    def split(self, due: list[Due], now_ns: int) -> tuple[list[Due], list[Due]]:
        """(to report, kept back): kept back is every request whose Nginx record was logged
        (its end; unknown: now) within grace_s of an open change. `count` them once they
        left the pending set."""
        with self._lock:
            if not self._open:
                return due, []
            report: list[Due] = []
            kept: list[Due] = []
            for d in due:
                logged = d.end_unix_nano or now_ns
                if any(c.at_ns - self._grace <= logged < c.at_ns + self._grace
                       for c in self._open):
                    kept.append(d)
                else:
                    report.append(d)
        return report, kept

    def count(self, kept: list[Due], now_ns: int) -> None:
        """Requests `split` kept back, now out of the pending set: counted to their change
        (the latest one whose grace holds them), for the log line `expire` writes."""
        with self._lock:
            self.suppressed_total += len(kept)
            for d in kept:
                logged = d.end_unix_nano or now_ns
                for c in reversed(self._open):
                    if c.at_ns - self._grace <= logged < c.at_ns + self._grace:
                        c.suppressed += 1
                        break

    def expire(self, now_ns: int) -> list[Change]:
        """Close the changes whose grace (and the delays of a report after it) are over; each
        is logged once with the number of reports it kept back."""
        with self._lock:
            closed = [c for c in self._open if now_ns >= c.at_ns + self._grace + self._keep]
            if closed:
                self._open = [c for c in self._open if c not in closed]
        for c in closed:
            log.warning("membership change (%s) at %s: %d missing_record reports kept back "
                        "(their Nginx record was logged within %.0f s of the change)",
                        c.trigger, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                            c.at_ns / _NS)), c.suppressed, self.grace_s)
        return closed

    def grace_until_ns(self) -> int | None:
        """When the last open change's grace ends (None: none open)."""
        with self._lock:
            return self._open[-1].at_ns + self._grace if self._open else None

    # -- polling thread --------------------------------------------------------------------
    def start(self) -> None:
        if self.dns_name is None:
            return
        self.poll(time.time_ns())  # the starting set, before any traffic
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.poll(time.time_ns())
            except Exception:  # keep polling: a bug here must not end membership watching
                log.exception("membership poll failed; retrying")
