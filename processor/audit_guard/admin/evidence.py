"""The audit view of one request (GET /requests/{trace_id} and its JSON twin): its kept records
and every flag with what it means and the values that explain it.

Built from the request window's entries (audit_guard.admin.window) and the active rules (a
`rule:<name>` flag shows the rule's severity, description and condition).
"""

from __future__ import annotations

from typing import Any

from .. import flags
from .models import EventOut, FlagEvidenceOut, RequestOut, RequestRecordOut, RulesOut

__all__ = ["request_view", "trace_link"]

Entry = dict[str, Any]

_TRUNCATION_MEANING = {
    flags.RESPONSE_SHORT: "fewer body bytes reached the client than the response promised "
                          "(Content-Length) or the upstream delivered",
    flags.REQUEST_INCOMPLETE: "nginx did not finish the request ($request_completion empty, "
                              "or the error log saw the client connection fail)",
    flags.UPSTREAM_CLOSED: "the nginx error log says the upstream closed, reset or timed out "
                           "after the response header went out: the body was cut",
    flags.JSON_CUT: "the log line's JSON ends mid-value; the fields shown are its intact prefix",
    flags.PARTIAL_LINE: "a container log line split at 16 KiB was never completed",
    flags.SIZE_LIMIT: "the line hit a known size cap (collector max_log_size, 2048 B, …)",
}
_TRUNCATION_EVIDENCE = {
    flags.RESPONSE_SHORT: ("status", "body_bytes_sent", "content_length", "upstream_length",
                           "compressed", "sent_http_content_length", "upstream_bytes_received"),
    flags.REQUEST_INCOMPLETE: ("status", "completed", "request_completion", "body_bytes_sent",
                               "nginx.error", "connection", "connection_requests"),
    flags.UPSTREAM_CLOSED: ("status", "body_bytes_sent", "upstream_length",
                            "upstream_bytes_received", "sent_http_content_type", "nginx.error",
                            "connection", "connection_requests", "upstream_status",
                            "audit.error_join.ambiguous", "audit.late_evidence"),
}
_MEANING = {
    flags.DELAYED: "read later than lag_threshold_s after it was written",
    flags.DUPLICATE: "the same source reported this record before (same trace and span id)",
    flags.MISSING_RECORD: "no app audit record for this request arrived within "
                          "reconcile.window_s",
    flags.LATE_RECORD: "the app record came after its request was reported missing",
    flags.MALFORMED: "not a record of its format at all; kept and exported as it came",
}
_WHAT = ("status", "method", "path", "route", "user_id", "app_id")


def trace_link(template: str | None, trace_id: str) -> str | None:
    """admin.trace_url with the trace id in it (a plain replace: Grafana URLs hold JSON)."""
    return template.replace("{trace_id}", trace_id) if template else None


def _value(entry: Entry, key: str) -> Any:
    for where in (entry, entry.get("attributes") or {}, entry.get("log_fields") or {}):
        if where.get(key) is not None:
            return where[key]
    return None


def _pick(entry: Entry, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k in keys if (v := _value(entry, k)) is not None}


def _lag_s(entry: Entry) -> float | None:
    seen, written = entry.get("observed_time_unix_nano"), entry.get("time_unix_nano")
    return None if seen is None or written is None else max(seen - written, 0) / 1e9


def _explain(flag: str, entry: Entry, rules: dict[str, Any], lag_threshold_s: float
             ) -> tuple[str, dict[str, Any]]:
    """(meaning, evidence) of one flag on one record."""
    reason = flags.truncation_reason(flag)
    if reason is not None:
        return (_TRUNCATION_MEANING.get(reason, "the record is cut short"),
                _pick(entry, _TRUNCATION_EVIDENCE.get(reason, ("status", "body_bytes_sent"))))
    name = flags.rule_name(flag)
    if name is not None:
        rule = rules.get(name)
        if rule is None:
            return f"matched audit rule {name} (no longer active)", _pick(entry, _WHAT)
        return (f"matched audit rule {name} ({rule.severity}): {rule.description or rule.when}",
                {"when": rule.when, **_pick(entry, _WHAT)})
    field = flags.invalid_field_name(flag)
    if field is not None:
        return (f"the record's {field} is present but not valid",
                {field: _value(entry, field), "unparsed": ", ".join(entry["unparsed"]) or None})
    if flag.startswith("missing_field:"):
        field = flag.partition(":")[2]
        return f"the record has no {field}", {field: None, **_pick(entry, ("status", "path"))}
    if flag.startswith("truncated_attribute:"):
        key = flag.partition(":")[2]
        return (f"the span's {key} was cut to max_attribute_bytes (the record is whole)",
                _pick(entry, (key,)))
    if flag == flags.DELAYED:
        return _MEANING[flag], {"ingest_lag_s": _lag_s(entry),
                                "lag_threshold_s": lag_threshold_s}
    if flag == flags.MISSING_RECORD:
        return _MEANING[flag], _pick(entry, ("audit.reconcile.window_s", "method", "path",
                                             "status", "parent_span_id"))
    return _MEANING.get(flag, flag), _pick(entry, ("status", "file", "line"))


def _record_out(entry: Entry) -> RequestRecordOut:
    fields = {k: entry.get(k) for k in RequestRecordOut.model_fields
              if k not in ("events", "ingest_lag_s", "missing")}
    return RequestRecordOut(
        **fields, ingest_lag_s=_lag_s(entry),
        events=[EventOut(**e) for e in entry.get("events") or ()],
        missing=flags.MISSING_RECORD in entry["flags"])


def _headline(entries: list[Entry]) -> Entry:
    """Whose request and what: the nginx record when kept, else the first real record."""
    for pick in (lambda e: e["source"] == "nginx",
                 lambda e: flags.MISSING_RECORD not in e["flags"], lambda e: True):
        found = next((e for e in entries if pick(e)), None)
        if found is not None:
            break
    assert found is not None
    user = found.get("user_id") or next((e["user_id"] for e in entries if e.get("user_id")),
                                        None)
    return {**found, "user_id": user}


def request_view(trace_id: str, entries: list[Entry], rules: RulesOut, *,
                 trace_url: str | None, lag_threshold_s: float,
                 window: tuple[int, int]) -> RequestOut:
    by_name = {r.name: r for r in rules.rules}
    found = []
    for e in entries:
        for flag in e["flags"]:
            meaning, evidence = _explain(flag, e, by_name, lag_threshold_s)
            found.append(FlagEvidenceOut(flag=flag, source=e["source"], span_id=e["span_id"],
                                         meaning=meaning, evidence=evidence))
    head = _headline(entries)
    sources = list(dict.fromkeys(e["source"] for e in entries))
    missing = list(dict.fromkeys(e["source"] for e in entries
                                 if flags.MISSING_RECORD in e["flags"]))
    requests, records = window
    note = (f"Kept: the flagged records of the last {requests} requests that had one "
            f"(admin.requests_kept), at most {records} each (admin.records_per_request). "
            "Records of this request that were not flagged — a clean app record or statement "
            "next to a flagged one — are not kept here: the trace UI has every span.")
    return RequestOut(
        trace_id=trace_id, trace_url=trace_link(trace_url, trace_id),
        user_id=head.get("user_id"), app_id=head.get("app_id"), method=head.get("method"),
        path=head.get("path"), status=head.get("status"),
        time_unix_nano=head.get("time_unix_nano"), flags=found,
        records=[_record_out(e) for e in entries], sources_kept=sources, missing=missing,
        note=note)
