"""Every written form of a time the sources read → int ns since the Unix epoch, or None.

One function per written form, all with the same contract:
- the result is an `int` of nanoseconds, every digit of the written fraction kept (up to ns;
  Python's datetime stops at µs and a float cannot hold today's epoch in ns, so neither is used
  for the arithmetic);
- None when the text is not that form, is not a calendar time (month 13, 30 February, second
  60 — rejected like Go's time.Parse, which the runtimes and the collector use), or is outside
  the range a span can carry (audit_guard.grammar.ranges.time_ok: 1970 .. 2262);
- a time written without offset is read in `naive_tz` — UTC unless the operator configured
  another zone (Settings.naive_timezone) — never in the machine's local zone, so a result does
  not depend on the TZ of the host that parses it.

The forms:
- `iso8601_ns`: ISO 8601 / RFC 3339 (`2026-11-26T14:00:00.123456789+01:00`, `…Z`, `T` or a
  space, fraction after `.` or `,` — Python logging's `asctime` — offset `Z`, `±HH:MM`, `±HHMM`,
  `±HH` or none). Container runtimes, `$time_iso8601`, app logs.
- `nginx_time_local_ns`: nginx `$time_local`, `26/Nov/2026:14:00:00 +0000` (English month
  names from nginx's own table, never the locale's; the offset is always written).
- `nginx_error_time_ns`: nginx error-log header, `2026/11/26 14:00:00` (host-local time of the
  nginx host: no offset written, so `naive_tz`).
- `postgres_ns`: PostgreSQL's `%m`/`%t`/csvlog `2026-11-26 14:00:00.123 UTC`: up to µs, the
  zone an abbreviation of log_timezone (`POSTGRES_ZONES`) or a numeric offset (`+01`, `+0530`,
  `+05:30`), none → `naive_tz`.
- `epoch_seconds_ns`: epoch seconds with a decimal fraction as text (nginx `$msec`,
  PostgreSQL `%n`), exact. A whole column of `$msec` values goes through
  audit_guard.sources.columns.seconds_ns instead (a C-level float pass, exact for the
  millisecond values nginx writes): that is the hot path of the access reader.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import ranges

__all__ = [
    "POSTGRES_TIME_PATTERN",
    "POSTGRES_ZONES",
    "civil_ns",
    "civil_ok",
    "epoch_seconds_ns",
    "iso8601_form",
    "iso8601_ns",
    "naive_zone",
    "nginx_error_time_ns",
    "nginx_time_local_ns",
    "postgres_ns",
]

_NS = 1_000_000_000


def naive_zone(name: str) -> tzinfo:
    """The zone named by Settings.naive_timezone (an IANA name such as "Europe/Berlin", or
    "UTC"); ValueError with a message for the operator when there is no such zone."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not a time zone this machine knows; use an IANA name such as "
            "'UTC' or 'Europe/Berlin' (the zone of times written without an offset)"
        ) from None


# -- the shared core ------------------------------------------------------------------------


def civil_ok(year: int, month: int, day: int, hour: int, minute: int, second: int) -> bool:
    """A calendar date and a clock time (no leap second: Go's time.Parse rejects second 60)."""
    return (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 59
            and 1 <= year <= 9999 and day <= calendar.monthrange(year, month)[1])


def _naive_offset_s(year: int, month: int, day: int, hour: int, minute: int, second: int,
                    naive_tz: tzinfo | None) -> int:
    if naive_tz is None or naive_tz is UTC:
        return 0
    offset = naive_tz.utcoffset(datetime(year, month, day, hour, minute, second))
    return int(offset.total_seconds()) if offset is not None else 0


def civil_ns(
    year: int, month: int, day: int, hour: int, minute: int, second: int,
    nanos: int = 0, offset_s: int | None = None, naive_tz: tzinfo | None = None,
) -> int | None:
    """A civil time at `offset_s` seconds east of UTC (None: not written, read in `naive_tz`,
    None meaning UTC) → ns since the epoch; None when not a calendar time or out of range."""
    if not civil_ok(year, month, day, hour, minute, second):
        return None
    if offset_s is None:
        offset_s = _naive_offset_s(year, month, day, hour, minute, second, naive_tz)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    ns = (seconds - offset_s) * _NS + nanos
    return ns if ranges.time_ok(ns) else None


def _fraction_ns(digits: str | None) -> int:
    """Decimal fraction digits → ns; digits past the ninth are dropped (as Go does)."""
    return int(digits[:9].ljust(9, "0")) if digits else 0


def _offset_s(sign: str, hours: str, minutes: str | None) -> int | None:
    h, m = int(hours), int(minutes or 0)
    if h > 23 or m > 59:
        return None
    return (h * 3600 + m * 60) * (1 if sign == "+" else -1)


# -- ISO 8601 / RFC 3339 --------------------------------------------------------------------

# "YYYY-MM-DD?HH:MM:SS" → UTC seconds, or None when not a calendar time. A log holds few
# distinct seconds per many lines, so caching the calendar arithmetic per head pays.
_HEADS: dict[str, int | None] = {}
_MAX_HEADS = 4096
_ISO_HEAD = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)", re.ASCII)
_ISO_TAIL = re.compile(r"(?:[.,](\d+))?(?:([Zz])|([+-])(\d\d)(?::?(\d\d))?)?", re.ASCII)


def _head_seconds(head: str) -> int | None:
    m = _ISO_HEAD.fullmatch(head)
    if m is None:
        return None
    parts = tuple(map(int, m.groups()))
    if not civil_ok(*parts):
        return None
    return calendar.timegm((*parts, 0, 0, 0))


def iso8601_ns(text: str, naive_tz: tzinfo | None = None) -> int | None:
    """ISO 8601 / RFC 3339 → ns since the epoch (see the module docstring)."""
    text = text.strip()
    head = text[:19]
    try:
        seconds = _HEADS[head]
    except KeyError:
        seconds = _head_seconds(head)
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()
        _HEADS[head] = seconds
    if seconds is None:
        return None
    tail = _ISO_TAIL.fullmatch(text, 19)
    if tail is None:
        return None
    fraction, zulu, sign, hours, minutes = tail.groups()
    if zulu:
        offset_s: int | None = 0
    elif sign:
        offset_s = _offset_s(sign, hours, minutes)
        if offset_s is None:
            return None
    else:
        y, mo, d, h, mi, s = (int(head[0:4]), int(head[5:7]), int(head[8:10]),
                              int(head[11:13]), int(head[14:16]), int(head[17:19]))
        offset_s = _naive_offset_s(y, mo, d, h, mi, s, naive_tz)
    ns = (seconds - offset_s) * _NS + _fraction_ns(fraction)
    return ns if ranges.time_ok(ns) else None


def iso8601_form(text: str) -> bool:
    """The digits and separators of `iso8601_ns`'s form are in place (the date may still be
    no calendar date, or out of range): tells "not this format" from "a bad time in it"."""
    text = text.strip()
    return (_ISO_HEAD.fullmatch(text[:19]) is not None
            and _ISO_TAIL.fullmatch(text, 19) is not None)


# -- nginx ----------------------------------------------------------------------------------

# nginx's own month table (src/core/ngx_times.c `months`), independent of the locale.
_MONTHS = {name: i for i, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_TIME_LOCAL = re.compile(
    r"(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", re.ASCII)
_ERROR_TIME = re.compile(r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)", re.ASCII)


def nginx_time_local_ns(text: str) -> int | None:
    """nginx `$time_local` (`26/Nov/2026:14:00:00 +0000`) → ns since the epoch."""
    m = _TIME_LOCAL.fullmatch(text.strip())
    if m is None or m.group(2) not in _MONTHS:
        return None
    offset_s = _offset_s(m.group(7), m.group(8), m.group(9))
    if offset_s is None:
        return None
    return civil_ns(int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)), int(m.group(4)),
                    int(m.group(5)), int(m.group(6)), 0, offset_s)


def nginx_error_time_ns(text: str, naive_tz: tzinfo | None = None) -> int | None:
    """nginx error-log time (`2026/11/26 14:00:00`, no offset: `naive_tz`) → ns."""
    m = _ERROR_TIME.fullmatch(text.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s = map(int, m.groups())
    return civil_ns(y, mo, d, h, mi, s, 0, None, naive_tz)


# -- PostgreSQL -----------------------------------------------------------------------------

# Unambiguous zone abbreviations PostgreSQL prints for log_timezone (hours east of UTC).
# Ambiguous ones (CST, IST, BST, …) are left out on purpose: a wrong hour is worse than an
# `invalid_field:time` finding.
POSTGRES_ZONES: dict[str, int] = {
    "UTC": 0, "GMT": 0, "UCT": 0, "Z": 0, "WET": 0, "WEST": 1, "CET": 1, "CEST": 2,
    "EET": 2, "EEST": 3, "MSK": 3, "JST": 9, "KST": 9, "HKT": 8, "AEST": 10, "AEDT": 11,
    "NZST": 12, "NZDT": 13, "EST": -5, "EDT": -4, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
}
_PG_ZONE = r"[A-Za-z]{1,6}|[+-]\d{2}(?::?\d{2})?"
# The written form, for the log_line_prefix regexes of audit_guard.sources.pgaudit.
POSTGRES_TIME_PATTERN = (
    rf"\d{{4}}-\d{{2}}-\d{{2}} \d{{2}}:\d{{2}}:\d{{2}}(?:\.\d{{1,6}})?(?: (?:{_PG_ZONE}))?"
)
_PG_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
    r"(?: (?:([A-Za-z]{1,6})|([+-])(\d\d)(?::?(\d\d))?))?",
    re.ASCII,
)


def postgres_ns(text: str, naive_tz: tzinfo | None = None) -> int | None:
    """A PostgreSQL log time → ns; None also when its zone abbreviation is not known."""
    m = _PG_TIME.fullmatch(text.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s = map(int, m.group(1, 2, 3, 4, 5, 6))
    fraction, zone, sign, hours, minutes = m.group(7, 8, 9, 10, 11)
    offset_s: int | None = None
    if zone is not None:
        if zone not in POSTGRES_ZONES:
            return None
        offset_s = POSTGRES_ZONES[zone] * 3600
    elif sign is not None:
        offset_s = _offset_s(sign, hours, minutes)
        if offset_s is None:
            return None
    return civil_ns(y, mo, d, h, mi, s, _fraction_ns(fraction), offset_s, naive_tz)


# -- epoch seconds --------------------------------------------------------------------------

_EPOCH = re.compile(r"(\d{1,11})(?:\.(\d+))?", re.ASCII)


def epoch_seconds_ns(text: str) -> int | None:
    """Epoch seconds with an optional decimal fraction (`1764165600.123`) → ns, exact."""
    m = _EPOCH.fullmatch(text.strip())
    if m is None:
        return None
    ns = int(m.group(1)) * _NS + _fraction_ns(m.group(2))
    return ns if ranges.time_ok(ns) else None
