"""audit_guard.grammar: every written form of a time, and every tool's size grammar, in one table
each; the same text means the same value in every source and on every machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from audit_guard import flags
from audit_guard.config import ConfigError, load_settings
from audit_guard.grammar import sizes
from audit_guard.grammar import timestamps as ts
from audit_guard.record import RecordBatch
from audit_guard.rules import RuleSet
from audit_guard.telemetry import BatchStats

S = 1_000_000_000
T = 1795701600 * S  # 2026-11-26T14:00:00Z
SUMMER = 1782907200 * S  # 2026-07-01T12:00:00Z
H = 3600 * S
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")

# (form, text, zone for naive times (None: the default, UTC), expected ns or None)
TIMES: list[tuple[str, str, tzinfo | None, int | None]] = [
    # ISO 8601 / RFC 3339
    ("iso8601", "2026-11-26T14:00:00Z", None, T),
    ("iso8601", "2026-11-26t14:00:00z", None, T),
    ("iso8601", "2026-11-26T14:00:00.1Z", None, T + S // 10),
    ("iso8601", "2026-11-26T14:00:00.123456789Z", None, T + 123_456_789),
    ("iso8601", "2026-11-26T14:00:00.000000001+00:00", None, T + 1),
    ("iso8601", "2026-11-26T14:00:00.1234567899Z", None, T + 123_456_789),  # Go truncates too
    ("iso8601", "2026-11-26T16:00:00.5+02:00", None, T + S // 2),
    ("iso8601", "2026-11-26T16:00:00+0200", None, T),
    ("iso8601", "2026-11-26T16:00:00+02", None, T),
    ("iso8601", "2026-11-26T09:30:00-04:30", None, T),
    ("iso8601", "2026-11-26 14:00:00,123", None, T + 123_000_000),  # Python logging asctime
    ("iso8601", "2026-11-26T14:00:00", None, T),  # naive: UTC by default
    ("iso8601", "2026-11-26T15:00:00", BERLIN, T),  # CET in November
    ("iso8601", "2026-07-01T14:00:00", BERLIN, SUMMER),  # CEST in July
    ("iso8601", "2026-11-26T22:00:00", SHANGHAI, T),
    ("iso8601", "2026-11-26T16:00:00+02:00", SHANGHAI, T),  # an offset beats the zone
    ("iso8601", "1970-01-01T00:00:00Z", None, 0),
    ("iso8601", "2262-04-11T23:47:16.854775807Z", None, 2**63 - 1),
    ("iso8601", "2262-04-11T23:47:16.854775808Z", None, None),  # past int64 ns
    ("iso8601", "1969-12-31T23:59:59.999999999Z", None, None),  # before the epoch
    ("iso8601", "2026-13-01T00:00:00Z", None, None),
    ("iso8601", "2026-02-29T00:00:00Z", None, None),  # 2026 is no leap year
    ("iso8601", "2016-12-31T23:59:60Z", None, None),  # leap second: Go rejects it too
    ("iso8601", "2026-11-26T14:00:00.Z", None, None),
    ("iso8601", "2026-11-26T14:00:00+25:00", None, None),
    ("iso8601", "2026-11-26", None, None),
    ("iso8601", "", None, None),
    ("iso8601", "yesterday", None, None),
    ("iso8601", "２０２６-11-26T14:00:00Z", None, None),  # fullwidth digits are no digits
    # nginx $time_local
    ("time_local", "26/Nov/2026:14:00:00 +0000", None, T),
    ("time_local", "26/Nov/2026:15:00:00 +0100", None, T),
    ("time_local", "26/Nov/2026:09:00:00 -0500", None, T),
    ("time_local", "26/Nov/2026:14:00:00 +0000", SHANGHAI, T),  # always has its offset
    ("time_local", "26/nov/2026:14:00:00 +0000", None, None),  # nginx writes "Nov"
    ("time_local", "26/Foo/2026:14:00:00 +0000", None, None),
    ("time_local", "31/Nov/2026:14:00:00 +0000", None, None),
    ("time_local", "26/Nov/2026:14:00:00", None, None),
    # nginx error-log header time (no offset)
    ("error_log", "2026/11/26 14:00:00", None, T),
    ("error_log", "2026/11/26 15:00:00", BERLIN, T),
    ("error_log", "2026/11/26 22:00:00", SHANGHAI, T),
    ("error_log", "2026/13/45 99:99:99", None, None),
    ("error_log", "2026-11-26 14:00:00", None, None),
    # PostgreSQL %m / %t / csvlog
    ("postgres", "2026-11-26 14:00:00 UTC", None, T),
    ("postgres", "2026-11-26 14:00:00.123 UTC", None, T + 123_000_000),
    ("postgres", "2026-11-26 14:00:00.123456 GMT", None, T + 123_456_000),
    ("postgres", "2026-11-26 15:00:00.5 CET", None, T + S // 2),
    ("postgres", "2026-11-26 23:00:00 JST", None, T),
    ("postgres", "2026-11-26 09:00:00 EST", None, T),
    ("postgres", "2026-11-26 15:00:00 +01", None, T),
    ("postgres", "2026-11-26 19:30:00 +0530", None, T),
    ("postgres", "2026-11-26 19:30:00 +05:30", None, T),
    ("postgres", "2026-11-26 14:00:00", None, T),  # no zone: naive
    ("postgres", "2026-11-26 22:00:00", SHANGHAI, T),
    ("postgres", "2026-11-26 14:00:00 CST", None, None),  # ambiguous: refused, not guessed
    ("postgres", "2026-11-26T14:00:00 UTC", None, None),
    # epoch seconds ($msec, PostgreSQL %n)
    ("epoch", "1795701600", None, T),
    ("epoch", "1795701600.123", None, T + 123_000_000),
    ("epoch", "1795701600.123456789", None, T + 123_456_789),  # every digit kept
    ("epoch", "0.000000001", None, 1),
    ("epoch", "-1.5", None, None),
    ("epoch", "1795701600.", None, None),
    ("epoch", "1e9", None, None),
    ("epoch", "9223372036.854775807", None, 2**63 - 1),
    ("epoch", "9223372037", None, None),  # past int64 ns
    ("epoch", "999999999999", None, None),  # 12 digits: no epoch in seconds
]

FORMS: dict[str, Callable[[str, tzinfo | None], int | None]] = {
    "iso8601": ts.iso8601_ns,
    "time_local": lambda text, _tz: ts.nginx_time_local_ns(text),
    "error_log": ts.nginx_error_time_ns,
    "postgres": ts.postgres_ns,
    "epoch": lambda text, _tz: ts.epoch_seconds_ns(text),
}


def _parse_all() -> list[int | None]:
    return [FORMS[form](text, zone) for form, text, zone, _ in TIMES]


@pytest.mark.parametrize(("form", "text", "zone", "expected"), TIMES)
def test_every_written_time(form: str, text: str, zone: tzinfo | None,
                            expected: int | None) -> None:
    assert FORMS[form](text, zone) == expected


def test_results_do_not_depend_on_the_machine_time_zone() -> None:
    """The whole table again, in a process whose local zone is Tokyo (+9, no DST) and in one in
    New York (-5/-4): a naive time must not be read in the host's zone anywhere."""
    code = ("import json, tests.unit.grammar.test_grammar as t, time; time.tzset(); "
            "print(json.dumps(t._parse_all()))")
    here = _parse_all()
    for zone in ("Asia/Tokyo", "America/New_York"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "TZ": zone}, check=True, timeout=60)
        assert json.loads(out.stdout) == here, zone


def test_nanoseconds_are_exact_where_a_float_would_round() -> None:
    # A float64 holds ~16 digits: today's epoch in ns has 19.
    assert ts.iso8601_ns("2026-11-26T14:00:00.999999999Z") == T + 999_999_999
    assert ts.epoch_seconds_ns("1795701600.999999999") == T + 999_999_999


def test_iso8601_form_tells_a_bad_time_from_another_format() -> None:
    assert ts.iso8601_form("1969-12-31T23:59:59Z")  # the form, out of range
    assert ts.iso8601_form("2026-02-30T00:00:00Z")  # the form, no calendar date
    assert not ts.iso8601_form("26/Nov/2026:14:00:00 +0000")


def test_naive_timezone_setting_is_validated_and_names_the_key() -> None:
    assert load_settings().naive_tz().utcoffset(None) is not None  # UTC by default
    assert load_settings(naive_timezone="Europe/Berlin").naive_tz() == BERLIN
    with pytest.raises(ConfigError) as err:
        load_settings(naive_timezone="Europe/Atlantis")
    assert "naive_timezone" in str(err.value) and "Europe/Atlantis" in str(err.value)


# -- sizes: each tool's own grammar ---------------------------------------------------------

# (text, nginx, docker max-size, logrotate, collector ByteSize); None: the tool refuses it.
# The nginx and logrotate columns are what `nginx -t` 1.22 and `logrotate -d` 3.21 accept (see
# test_sizes_agree_with_the_installed_tools); docker and the collector are from their code.
SIZES: list[tuple[str, int | None, int | None, int | None, int | None]] = [
    ("100", 100, 100, 100, 100),
    ("16k", 16384, 16000, 16384, None),
    ("16K", 16384, 16000, 16384, None),
    ("16KB", None, 16000, None, 16000),
    ("16kb", None, 16000, None, 16000),
    ("16KiB", None, 16000, None, 16384),  # docker: the "i" does not make it binary
    ("16KIB", None, 16000, None, None),  # the collector's "i" is lowercase only
    ("1m", 1024**2, 1000**2, None, None),
    ("1M", 1024**2, 1000**2, 1024**2, None),
    ("1MiB", None, 1000**2, None, 1024**2),
    ("1MB", None, 1000**2, None, 1000**2),
    ("1G", None, 1000**3, 1024**3, None),
    ("1g", None, 1000**3, None, None),
    ("1GiB", None, 1000**3, None, 1024**3),
    ("1T", None, 1000**4, None, None),
    ("1.5M", None, 1_500_000, None, None),
    ("1.5MiB", None, 1_500_000, None, 1_572_864),
    ("100 MB", None, 100_000_000, None, 100_000_000),
    ("100  MB", None, None, None, 100_000_000),  # docker takes one space at most
    ("0x10", None, None, 16, None),  # logrotate: strtoul(…, 0)
    ("010", 10, 10, 8, 10),
    ("09", 9, 9, None, 9),
    ("10b", None, 10, None, None),
    ("-1", None, None, None, None),  # docker's "unlimited" is no size
    ("", None, None, None, None),
    ("k", None, None, 0, None),  # logrotate: strtoul("") is 0, and nothing is left over
    ("16 k", None, 16000, None, None),
]


@pytest.mark.parametrize(("text", "nginx", "docker", "logrotate", "collector"), SIZES)
def test_every_tool_reads_sizes_its_own_way(text: str, nginx: int | None, docker: int | None,
                                            logrotate: int | None,
                                            collector: int | None) -> None:
    got = {tool: grammar.parse(text) for tool, grammar in sizes.GRAMMARS.items()}
    assert got == {"nginx": nginx, "docker": docker, "logrotate": logrotate,
                   "collector": collector}


_NGINX_CONF = """error_log {dir}/e.log; pid {dir}/n.pid; events {{}}
http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir};
  fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{ listen 127.0.0.1:1; location / {{ client_body_buffer_size "{size}"; }} }} }}
"""


def test_sizes_agree_with_the_installed_tools(tmp_path: Path) -> None:
    """The nginx and logrotate columns, asked of the real programs (installed by bootstrap):
    accepted or refused exactly where the table says. client_body_buffer_size is read by
    ngx_conf_set_size_slot, like proxy_buffer_size, without its cross-checks."""
    for text, nginx, _docker, logrotate, _collector in SIZES:
        if not text or '"' in text:
            continue
        conf = tmp_path / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(dir=tmp_path, size=text))
        run = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path)],
                             capture_output=True, text=True, timeout=30)
        assert (run.returncode == 0) == (nginx is not None), (text, run.stderr)
        log = tmp_path / "a.log"
        log.touch()
        lconf = tmp_path / "logrotate.conf"
        lconf.write_text(f"{log} {{\n  size {text}\n}}\n")
        run = subprocess.run([LOGROTATE, "-d", "-s", str(tmp_path / "state"), str(lconf)],
                             capture_output=True, text=True, timeout=30)
        m = re.search(r"rotating pattern: .*?(\d+) bytes", run.stderr)
        assert (int(m.group(1)) if m else None) == logrotate, (text, run.stderr)


# -- flags: every parameterised flag reads back through its inverse -------------------------


@pytest.mark.parametrize("name", ["admin_export", "a:b", "rule:nested", "x"])
def test_flag_helpers_have_inverses(name: str) -> None:
    assert flags.rule_name(flags.rule(name)) == name
    assert flags.invalid_field_name(flags.invalid_field(name)) == name
    for other in (flags.DUPLICATE, flags.invalid_field("rule"), flags.missing_field(name),
                  flags.truncated_attribute("rule:x")):
        assert flags.rule_name(other) is None
    for reason in flags.TRUNCATION_REASONS:
        assert flags.truncation_reason(flags.truncated(reason)) == reason
        assert flags.rule_name(flags.truncated(reason)) is None
    assert flags.truncation_reason(flags.rule("truncated:x")) is None
    assert flags.invalid_field_name(flags.missing_field(name)) is None


def test_rule_matches_are_counted_by_the_rule_name_read_back_from_the_flag() -> None:
    """telemetry reads `rule:<name>` through flags.rule_name: each rule's flags are counted
    under its name and severity, other flags (even one naming a rule) not at all."""
    rules = RuleSet.from_yaml(
        "- {name: admin.export, when: 'status == `500`', severity: high}\n"
        "- {name: rule, when: 'status == `500`', severity: low}\n")
    batch = RecordBatch("nginx", 3, status=[500, 200, 500])
    batch.flags = {0: [flags.DUPLICATE, flags.rule("admin.export"), flags.rule("rule")],
                   1: [flags.invalid_field("rule"), flags.missing_field("rule")],
                   2: [flags.rule("admin.export")]}
    stats = BatchStats()
    stats.add_batch(batch, rules)
    assert stats.rule_matches == {("admin.export", "high"): 2, ("rule", "low"): 1}


def test_sources_read_naive_times_as_utc_whatever_the_host_zone() -> None:
    """The readers, not only the grammar: an ISO time without offset in an nginx access record
    (read in the host's zone before), a Docker `time`, an app line and an nginx error-log line
    give the same instant in a Tokyo process as here."""
    code = """if True:
        import json, time
        time.tzset()
        from audit_guard.sources import app, container, nginx_access, nginx_error
        print(json.dumps([
            nginx_access.parse_lines(['{"time_iso8601": "2026-11-26T14:00:00", "uri": "/"}'])
            .time_unix_nano[0],
            nginx_access.parse_lines(['{"time_local": "26/Nov/2026:15:00:00 +0100", "uri": "/"}'])
            .time_unix_nano[0],
            container.recombine_docker(
                [(1, '{"log":"x\\\\n","stream":"stdout","time":"2026-11-26T14:00:00"}')])[0]
            .observed_time_unix_nano,
            app.parse_line('{"time": "2026-11-26 14:00:00.5", "path": "/"}').time_unix_nano,
            nginx_error.parse_line(1, "2026/11/26 14:00:00 [error] 1#1: x").time_unix_nano,
        ]))
    """
    for zone in ("UTC", "Asia/Tokyo"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "TZ": zone}, check=True, timeout=60)
        assert json.loads(out.stdout) == [T, T, T, T + S // 2, T], zone


def test_naive_timezone_reaches_the_readers() -> None:
    """`naive_timezone` is how the service and replay read a time written without an offset
    (an app's `2026-11-26 14:00:00`, nginx's error log)."""
    from audit_guard.config import load_settings
    from audit_guard.pipeline import Pipeline

    line = '{"time": "2026-11-26T14:00:00", "request_id": "' + "a" * 32 + '", "user_id": "u"}'
    utc = Pipeline(load_settings()).parse("app", [line]).time_unix_nano[0]
    tokyo = Pipeline(load_settings(naive_timezone="Asia/Tokyo")).parse("app", [line])
    assert utc is not None and tokyo.time_unix_nano[0] == utc - 9 * 3600 * 10**9


# -- range checks: the column passes against the per-value rules (hypothesis) -----------------
_IDS = st.one_of(st.none(), st.sampled_from(["", "0af7651916cd43dd8448eb211c80319c", "a" * 256,
                                             "a" * 257, "a\u0007b", "tab\there", "é", "\u2028"]),
                 st.text(max_size=12), st.from_regex(r"[0-9a-f]{32}", fullmatch=True))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(column=st.lists(_IDS, max_size=10))
@example(column=["0af7651916cd43dd8448eb211c80319c", "x\x7f"])  # alnum fast path, then not
def test_id_column_check_equals_the_per_value_rule(column: list) -> None:
    from audit_guard.grammar.ranges import check_ids, id_ok

    unparsed: dict[int, list[str]] = {}
    out = check_ids("request_id", list(column), unparsed)
    assert out == [v if v is None or id_ok(v) else None for v in column]
    assert unparsed == {i: ["request_id"] for i, v in enumerate(column)
                        if v is not None and not id_ok(v)}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(column=st.lists(st.one_of(st.none(), st.integers(-5, 2**64)), max_size=10))
def test_numeric_column_check_equals_the_per_value_rule(column: list) -> None:
    from audit_guard.grammar.ranges import SIZES, all_within, check_column, size_ok

    assert all_within(column, SIZES) == (bool(column) and all(
        v is not None and size_ok(v) for v in column))
    unparsed: dict[int, list[str]] = {}
    out = check_column("size", list(column), SIZES, unparsed)
    assert out == [v if v is None or size_ok(v) else None for v in column]
    assert unparsed == {i: ["size"] for i, v in enumerate(column)
                        if v is not None and not size_ok(v)}
