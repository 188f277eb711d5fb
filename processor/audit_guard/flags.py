"""The flag vocabulary: the one place that names what can be wrong with an audit record.

Flags are a public contract. They appear in `audit-guard replay` output (`"flags": [...]`) and on
every span as the string-array attribute `audit.flags`. Add new flags here, document them in
the flag table of README.md ("What gets flagged"; tests/test_docs.py checks it lists every flag),
and never change the meaning of an existing one.
"""

from __future__ import annotations

__all__ = [
    "DELAYED",
    "DUPLICATE",
    "MALFORMED",
    "LATE_RECORD",
    "MISSING_RECORD",
    "TRUNCATION_REASONS",
    "invalid_field",
    "invalid_field_name",
    "missing_field",
    "rule",
    "rule_name",
    "truncated",
    "truncated_attribute",
    "truncation_reason",
]

# Prefixes of the parameterised flags; read them back with the inverse helpers below, never by
# slicing a flag by hand.
_TRUNCATED = "truncated:"
_INVALID_FIELD = "invalid_field:"
_RULE = "rule:"

# Why a record is known or suspected to be cut short.
JSON_CUT = "json_cut"  # the record's JSON ends mid-value; the intact prefix was salvaged
PARTIAL_LINE = "partial_line"  # a container log line split at 16 KiB was never completed
RESPONSE_SHORT = "response_short"  # fewer body bytes sent than Content-Length / upstream length
REQUEST_INCOMPLETE = "request_incomplete"  # nginx's $request_completion was empty
SIZE_LIMIT = "size_limit"  # the line hit a known size cap (collector max_log_size, 2048 B, …)
UPSTREAM_CLOSED = "upstream_closed"  # nginx's error log says the upstream closed early
TRUNCATION_REASONS = frozenset(
    {JSON_CUT, PARTIAL_LINE, RESPONSE_SHORT, REQUEST_INCOMPLETE, SIZE_LIMIT, UPSTREAM_CLOSED}
)

DELAYED = "delayed"  # ingest lag above the configured threshold
DUPLICATE = "duplicate"  # the same source reported the same request twice
MISSING_RECORD = "missing_record"  # an expected record never arrived (synthetic span)
LATE_RECORD = "late_record"  # came after its request was already reported missing_record
MALFORMED = "malformed"  # not a record of its format at all (e.g. not JSON); kept and exported


def truncated(reason: str) -> str:
    if reason not in TRUNCATION_REASONS:
        raise ValueError(f"unknown truncation reason {reason!r}")
    return _TRUNCATED + reason


def truncation_reason(flag: str) -> str | None:
    """The reason of a `truncated:<reason>` flag (inverse of `truncated`); None for others."""
    return flag[len(_TRUNCATED):] if flag.startswith(_TRUNCATED) else None


def missing_field(name: str) -> str:
    return f"missing_field:{name}"


def invalid_field(name: str) -> str:
    return _INVALID_FIELD + name


def invalid_field_name(flag: str) -> str | None:
    """The field of an `invalid_field:<name>` flag (inverse of `invalid_field`); None for
    others."""
    return flag[len(_INVALID_FIELD):] if flag.startswith(_INVALID_FIELD) else None


def rule(name: str) -> str:
    return _RULE + name


def rule_name(flag: str) -> str | None:
    """The rule of a `rule:<name>` flag (inverse of `rule`); None for any other flag."""
    return flag[len(_RULE):] if flag.startswith(_RULE) else None


def truncated_attribute(key: str) -> str:
    """The span attribute `key` (e.g. url.path) was cut to max_attribute_bytes: the record's
    value was longer (its span carries the original length). Not a truncated:<reason>: the
    record itself is whole, only its span is shortened."""
    return f"truncated_attribute:{key}"
