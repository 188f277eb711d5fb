"""The audit view's recent window: the flagged records of the last requests, by trace id.

Fed from each handed-on Export's flagged records (audit_guard.flagged, at most
FLAGGED_PER_BATCH a batch), after the spans left — so it shows what the spans show, redacted
the same way. A request is kept when one of its records was flagged (a missing_record marker
is a flagged record too); its records that were not flagged (a clean app record next to a cut
nginx one) are not: keeping every record in case its trace is flagged later would cost every
record a lookup. The trace UI (admin.trace_url) has those.

Memory is bounded twice: `requests` traces (the least recently flagged go first) of at most
`records` entries each (the last ones), and each entry's text cut to MAX_TEXT_CHARS. Of the
record's log fields only the evidence is there (audit_guard.flagged.EVIDENCE_FIELDS).

Cost: what is kept runs for every flagged record of every Export, so it is the least that
bounds memory: the record's row as audit_guard.flagged took it, when no record of its batch can
have more text than MAX_TEXT_CHARS (checked once a batch, from the longest value of each
column); otherwise (rare) its dicts, the text measured and cut (`kept_form`). The dicts the API
shows are made when it is read (`kept_dict`, `kept_top`, `view_entry`).
"""

from __future__ import annotations

from collections import OrderedDict
from operator import itemgetter
from typing import Any

from ..flagged import TRACE_ID, FlaggedRows

__all__ = ["MAX_TEXT_CHARS", "Kept", "RequestWindow", "kept_dict", "kept_form", "kept_records",
           "kept_top", "view_entry"]

DEFAULT_REQUESTS = 200
DEFAULT_RECORDS = 20
MAX_TEXT_CHARS = 4096  # of one record's text: path, names, attribute values, event texts
_MAX_VALUE_CHARS = 1024  # of one value within that
_MAX_EVENTS = 8
_TOP_TEXT = ("path", "user_id", "app_id", "method")
_DETAIL_TEXT = ("name", "route", "client_address", "server_address", "user_agent", "file")
_top_text = itemgetter(*_TOP_TEXT)
_detail_text = itemgetter(*_DETAIL_TEXT)
_PLAIN = ("duration_ns", "body_bytes_sent", "completed", "content_length", "upstream_length",
          "compressed", "observed_time_unix_nano", "line", "trace_id_generated")


def _long(values: Any) -> int:
    """Characters of the str among `values` (str.__instancecheck__ keeps the pass C-level)."""
    return len("".join(filter(str.__instancecheck__, values)))


def _text_size(kept: dict[str, Any]) -> int:
    detail = kept["detail"]
    try:  # audit_guard.flagged gives both dicts every key
        texts = _top_text(kept) + _detail_text(detail)
    except KeyError:  # a flagged record made elsewhere may lack some
        texts = (*map(kept.get, _TOP_TEXT), *map(detail.get, _DETAIL_TEXT))
    size = _long(texts) + _long(detail["log_fields"].values())
    if detail.get("attributes"):
        size += _long(detail["attributes"].values())
    for _, name, attrs in detail.get("events") or ():
        size += len(name) + _long((attrs or {}).values())
    return size


class _Budget:
    """What is left of a record's MAX_TEXT_CHARS; values past it are cut."""

    def __init__(self) -> None:
        self.left = MAX_TEXT_CHARS

    def text(self, value: Any) -> Any:
        if value.__class__ is not str:
            return value
        room = min(self.left, _MAX_VALUE_CHARS)
        if len(value) > room:
            value = value[:room] + "…"
        self.left -= min(len(value), self.left)
        return value

    def mapping(self, values: dict[str, Any] | None) -> dict[str, Any]:
        return {self.text(k): self.text(v) for k, v in (values or {}).items()}


def _clip(kept: dict[str, Any]) -> None:
    """Cut a record's text to MAX_TEXT_CHARS, in the order the view shows it (rare: a record
    of a few hundred characters is the rule)."""
    budget = _Budget()
    for key in _TOP_TEXT:
        kept[key] = budget.text(kept.get(key))
    detail = kept["detail"] = dict(kept["detail"])
    for key in _DETAIL_TEXT:
        detail[key] = budget.text(detail.get(key))
    detail["attributes"] = budget.mapping(detail.get("attributes"))
    detail["log_fields"] = budget.mapping(detail["log_fields"])
    detail["events"] = [(t, budget.text(name), budget.mapping(attrs))
                        for t, name, attrs in (detail.get("events") or ())[:_MAX_EVENTS]]
    detail["clipped"] = True


def kept_form(flagged: dict[str, Any], received_unix_nano: int) -> dict[str, Any]:
    """What the window keeps of a flagged record (audit_guard.flagged: its log fields already
    cut down to the evidence): the same, its text bounded."""
    kept = {**flagged, "received_unix_nano": received_unix_nano}
    if "detail" not in kept:  # a flagged record made elsewhere (tests, tools)
        kept["detail"] = {"log_fields": {}}
    if _text_size(kept) > MAX_TEXT_CHARS:
        _clip(kept)
    return kept


# A kept record: (its FlaggedRows, its row, received_unix_nano); or, for a record whose text
# had to be cut (or one made elsewhere: tests, tools), (None, its kept_form, received_unix_nano).
Kept = tuple[FlaggedRows | None, Any, int]


def kept_records(flagged: FlaggedRows | dict[str, Any], received_unix_nano: int) -> list[Kept]:
    """What the window and the ring keep of an Export's flagged records: their rows as they
    are, unless some record's text may be over MAX_TEXT_CHARS (then each is cut as needed)."""
    if isinstance(flagged, dict):
        return [(None, kept_form(flagged, received_unix_nano), received_unix_nano)]
    bound = flagged.text_bound
    if bound is not None and bound <= MAX_TEXT_CHARS:
        return [(flagged, row, received_unix_nano) for row in flagged.rows]
    return [(None, kept_form(flagged.record(row), received_unix_nano), received_unix_nano)
            for row in flagged.rows]


def kept_dict(kept: Kept) -> dict[str, Any]:
    """A kept record in its kept form (kept_form's: with its detail)."""
    rows, row, received = kept
    if rows is None:
        return row  # type: ignore[no-any-return]
    out = rows.record(row)
    out["received_unix_nano"] = received
    return out


def kept_top(kept: Kept) -> dict[str, Any]:
    """A kept record without its detail (GET /api/flags)."""
    rows, row, received = kept
    if rows is None:
        return {k: v for k, v in row.items() if k != "detail"}
    out = rows.top(row)
    out["received_unix_nano"] = received
    return out


def view_entry(kept: dict[str, Any]) -> dict[str, Any]:
    """A kept record as the view shows it: plain values only, copied."""
    detail = kept["detail"]
    entry = {k: v for k, v in kept.items() if k != "detail"}
    entry["flags"] = list(kept.get("flags") or ())
    parent = detail.get("parent_span_id")
    entry["parent_span_id"] = parent.hex() if isinstance(parent, bytes) and parent else None
    for key in (*_DETAIL_TEXT, *_PLAIN):
        entry[key] = detail.get(key)
    for key in ("violations", "truncation_reasons", "unparsed"):
        entry[key] = list(detail.get(key) or ())
    entry["attributes"] = dict(detail.get("attributes") or {})
    entry["events"] = [{"time_unix_nano": t or None, "name": name, "attributes": dict(attrs or {})}
                       for t, name, attrs in (detail.get("events") or ())[:_MAX_EVENTS]]
    entry["log_fields"] = dict(detail["log_fields"])
    entry["clipped"] = bool(detail.get("clipped"))
    return entry


class RequestWindow:
    """trace id → its last `records` kept records, for the last `requests` traces. Not
    thread-safe: AdminState holds its lock around every call."""

    def __init__(self, requests: int = DEFAULT_REQUESTS, records: int = DEFAULT_RECORDS) -> None:
        self.requests = requests
        self.records = records
        self._traces: OrderedDict[str, list[Kept]] = OrderedDict()

    def add(self, kept: Kept) -> None:
        # A list a trace, not a deque(maxlen): most traces have one flagged record, and a
        # deque allocates a 64-slot block for it (measured: 0.52 → 0.18 µs a new trace).
        rows, row, _ = kept
        trace_id = row["trace_id"] if rows is None else row[TRACE_ID]
        records = self._traces.get(trace_id)
        if records is None:
            self._traces[trace_id] = records = [kept]
            if len(self._traces) > self.requests:
                self._traces.popitem(last=False)
        else:
            self._traces.move_to_end(trace_id)
            records.append(kept)
        if len(records) > self.records:
            del records[:len(records) - self.records]

    def get(self, trace_id: str) -> list[dict[str, Any]] | None:
        """The kept records of a trace as view entries, oldest first; None: not in the
        window."""
        records = self._traces.get(trace_id)
        return None if records is None else [view_entry(kept_dict(k)) for k in records]

    def __len__(self) -> int:
        return len(self._traces)
