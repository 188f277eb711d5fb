"""What the admin API and the status page show, built from the admin state and the rule
registry: per-source status with a health colour, readiness, the dead-letter spool, the active
rules with their counts, and the recent flagged records.
"""

from __future__ import annotations

from typing import Any

from ..rules import RuleRegistry
from .models import (
    DeadLetterOut,
    FlagOut,
    FlagsOut,
    MembershipOut,
    ReadyOut,
    RuleOut,
    RulesOut,
    SourceOut,
    StatusOut,
)
from .state import AdminState, SourceStatus

_RECENT_S = 60  # "records in the last minute": green; a flag within it: amber
_QUIET_S = 300  # no records for longer: red
_MIN_COMPLETENESS = 0.99


def health_of(status: SourceStatus, now_ns: int, lag_threshold_s: float) -> tuple[str, str]:
    """(green|amber|red, why) for one source — the status page's colours."""
    since = (now_ns - status.last_seen_unix_nano) / 1e9 if status.last_seen_unix_nano else None
    if status.silent:
        return "red", "silent while traffic continues"
    if status.completeness is not None and status.completeness < _MIN_COMPLETENESS:
        return "red", f"completeness {status.completeness:.2%} < {_MIN_COMPLETENESS:.0%}"
    if since is None or since > _QUIET_S:
        return "red", f"no records for more than {_QUIET_S // 60} min"
    flagged_recently = (status.last_flag_unix_nano is not None
                        and (now_ns - status.last_flag_unix_nano) / 1e9 <= _RECENT_S)
    if flagged_recently:
        return "amber", "flagged records in the last minute"
    if status.last_lag_s is not None and status.last_lag_s > lag_threshold_s:
        return "amber", f"ingest lag {status.last_lag_s:.1f} s > {lag_threshold_s:g} s"
    if since > _RECENT_S:
        return "amber", "no records in the last minute"
    return "green", "records flowing, nothing flagged"


def ready_out(state: AdminState) -> ReadyOut:
    r = state.readiness()
    return ReadyOut(ready=r.ready, reason=r.reason, receiver_started=r.receiver_started,
                    last_export_ok_unix_nano=r.last_export_ok_unix_nano,
                    last_export_failed_unix_nano=r.last_export_failed_unix_nano,
                    error=None if r.ready else r.reason)


def _deadletter_out(state: AdminState) -> DeadLetterOut | None:
    d = state.deadletter()
    if d is None:
        return None
    return DeadLetterOut(directory=str(d.directory), entries=d.entries, spans=d.spans,
                         bytes=d.bytes, max_bytes=d.max_bytes, oldest_unix_nano=d.oldest_unix_nano,
                         reasons=dict(d.reasons), corrupt_files=d.corrupt_files)


def status_view(state: AdminState, lag_threshold_s: float) -> StatusOut:
    now = state.now_ns()
    sources = []
    for name, s in state.sources().items():
        health, why = health_of(s, now, lag_threshold_s)
        sources.append(SourceOut(
            name=name, records_total=s.records_total, flagged_total=s.flagged_total,
            last_seen_unix_nano=s.last_seen_unix_nano,
            seconds_since_last_seen=(now - s.last_seen_unix_nano) / 1e9
            if s.last_seen_unix_nano else None,
            last_flag_unix_nano=s.last_flag_unix_nano, last_lag_s=s.last_lag_s,
            avg_lag_s=s.avg_lag_s, completeness=s.completeness, silent=s.silent,
            health=health, health_reason=why))  # type: ignore[arg-type]
    return StatusOut(now_unix_nano=now, lag_threshold_s=lag_threshold_s,
                     ready=ready_out(state), sources=sources,
                     deadletter=_deadletter_out(state), membership=_membership_out(state))


def _membership_out(state: AdminState) -> MembershipOut | None:
    watch = state.membership
    if watch is None:
        return None
    last = watch.last_change
    return MembershipOut(
        dns_name=watch.dns_name,
        addresses=sorted(watch.addresses) if watch.addresses is not None else None,
        grace_s=watch.grace_s, last_change_unix_nano=last.at_ns if last else None,
        last_change_trigger=last.trigger if last else None,
        grace_until_unix_nano=watch.grace_until_ns(), suppressed_total=watch.suppressed_total)


def rules_view(rules: RuleRegistry, files: list[str], include_builtin: bool) -> RulesOut:
    counts, errors = rules.counts, rules.errors
    matches: dict[str, int] = {}
    for (name, _severity), n in counts.items():
        matches[name] = matches.get(name, 0) + n
    return RulesOut(
        rules=[RuleOut(name=r.name, description=r.description, when=r.when,
                       severity=r.severity, labels=dict(r.labels), source=r.source,
                       index=r.index, matches=matches.get(r.name, 0),
                       errors=errors.get(r.name, 0))
               for r in rules.current],
        rules_files=files, builtin_rules=include_builtin)


def flags_view(state: AdminState, limit: int, **filters: Any) -> FlagsOut:
    found = state.flags(limit=limit, **filters)
    return FlagsOut(flags=[FlagOut(**f) for f in found], buffer_size=state.flags_buffer)
