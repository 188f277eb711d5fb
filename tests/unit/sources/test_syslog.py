"""sources/syslog.py: syslog messages as Docker's syslog driver and logger write them → the app's
line, and their decoding from an OTLP request as the collector's syslog receiver sends them."""

from __future__ import annotations

import pytest

from audit_guard.config import load_settings
from audit_guard.decode import APP, group_logs
from audit_guard.pipeline import Pipeline
from audit_guard.sources.syslog import SIZE_CAPS, parse_message
from tests.support.otlp_doubles import logs_request

LINE = '{"ts":"2026-12-02T11:00:00.000Z","message":"m"}'


@pytest.mark.parametrize(("raw", "protocol", "app", "proc", "time_set"), [
    # logger --rfc5424 (its own structured data, no PROCID)
    (f'<13>1 2026-12-02T11:44:07.422529+00:00 vm app/abc - - [timeQuality tzKnown="1" '
     f'isSynced="0"] {LINE}', "rfc5424", "app/abc", None, True),
    # Docker syslog-format=rfc5424: tag as APP-NAME and MSGID, dockerd's pid, no SD
    (f"<30>1 2026-12-02T11:44:07Z host web/0123456789ab 812 web/0123456789ab - {LINE}",
     "rfc5424", "web/0123456789ab", "812", True),
    # Docker's default rfc3164 (srslog: TAG[PID]) and logger --rfc3164 (no pid)
    (f"<30>Dec  2 11:44:07 host web.1.abc[812]: {LINE}", "rfc3164", "web.1.abc", "812", False),
    (f"<13>Dec  2 11:44:07 vm app/abc123: {LINE}", "rfc3164", "app/abc123", None, False),
    # RFC 5424 with a BOM before MSG, and an escaped ] inside a structured-data value
    (f'<13>1 - - - - - [x a="b\\]c"] \ufeff{LINE}', "rfc5424", None, None, False),
])
def test_the_app_line_is_unwrapped(raw: str, protocol: str, app: str | None, proc: str | None,
                                   time_set: bool) -> None:
    msg = parse_message(raw)
    assert (msg.message, msg.protocol, msg.app_name, msg.proc_id) == (LINE, protocol, app, proc)
    assert (msg.time_unix_nano is not None) == time_set
    assert not msg.cut


def test_rfc5424_time_is_kept_to_the_microsecond() -> None:
    msg = parse_message(f"<30>1 2026-12-02T11:44:07.123456+01:00 h a 1 a - {LINE}")
    assert msg.time_unix_nano == 1_796_208_247_123_456_000


def test_text_without_a_header_is_the_line_as_it_stands() -> None:
    assert parse_message(LINE).message == LINE
    assert parse_message("<13>garbage").message == "<13>garbage"
    assert parse_message(b"\xff<13>x").message == "\ufffd<13>x"


def test_an_octet_count_is_stripped_and_checked() -> None:
    frame = f"<13>1 - h a - - - {LINE}"
    whole = parse_message(f"{len(frame.encode())} {frame}")
    assert (whole.message, whole.cut) == (LINE, False)
    short = parse_message(f"{len(frame.encode()) + 10} {frame}")  # fewer bytes than promised
    assert (short.message, short.cut) == (LINE, True)


def test_a_message_at_a_size_cap_is_cut_one_below_is_not() -> None:
    header = "<13>Dec  2 11:44:07 vm app: "
    assert 1024 in SIZE_CAPS
    assert parse_message(header + "x" * 1024).cut  # logger --size default: MSG cut at 1 KiB
    assert not parse_message(header + "x" * 1023).cut
    assert parse_message(("<13>1 - - - - - " + "y" * 9000)[:8192]).cut  # rsyslog's 8 KiB


def test_decode_makes_syslog_messages_app_rows_and_the_pipeline_flags_a_cut() -> None:
    cut = "<13>Dec  2 11:44:07 vm app: " + LINE[:-1] + "x" * (1024 - len(LINE) + 1)
    req = logs_request(f"<30>1 2026-12-02T11:44:07Z h a 1 a - {LINE}", cut, source="syslog")
    rows = group_logs(req)[APP]
    assert rows.bodies[0] == LINE and rows.observed[0] is not None
    assert rows.observed[1] is None and rows.cut == {1}
    (batch,) = Pipeline(load_settings()).records_from_logs(req)
    assert "truncated:size_limit" in batch.flags[1] and "truncated:json_cut" in batch.flags[1]
    assert not any(f.startswith("truncated:") for f in batch.flags[0])


@pytest.mark.parametrize("raw", [
    "", "<", "<999>", "<13>1", "<13>1 " + "- " * 5, "99999999999 <13>x", "٣ <13>1 - - - - - -",
    "<13>1 - - - - - [unclosed", '<13>1 - - - - - [a b="\\', "<13>Dec 99 99:99:99 h t[: x",
    "<13>1 9999-99-99T99:99:99Z h a - - - x", b"\xff\xfe", "\x00" * 10,
])
def test_no_message_fails_to_parse(raw: str | bytes) -> None:
    msg = parse_message(raw)
    assert isinstance(msg.message, str)
