"""The pgaudit source against a real PostgreSQL 15 with pgaudit, plus pure unit tests.

The real server (tests/support/pg.py) logs to stderr, csvlog and jsonlog at once, so the three
readings of the same audit events can be compared record by record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_guard import flags
from audit_guard.record import AuditRecord
from audit_guard.sources.pgaudit import (
    SIZE_CAPS,
    SOURCE,
    detect_format,
    logical_records,
    parse,
    prefix_regex,
    sqlcomment_traceparent,
)
from tests.support.pg import LOG_LINE_PREFIX, PgInstance, postgres_fixture

KINDS = ("stderr", "csvlog", "jsonlog")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACEPARENT_2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
END_MARKER = "audit-guard end of workload"

INSERT = """INSERT INTO items VALUES (1, 'a, "b", c');"""
MULTILINE_SELECT = "SELECT id,\n       name\n  FROM items\n WHERE id = 1;"
# Sent verbatim (psql -c): psql's script reader would drop the blank line.
BLANK_LINE_SELECT = "SELECT 'a blank line follows'\n\n\t AS note"
UPDATE = f"UPDATE items SET name = 'x' WHERE id = 1 /*traceparent='{TRACEPARENT}'*/;"
# What OpenTelemetry's sqlcommenter writes: sorted keys, URL-encoded values.
UPDATE_ENCODED = (
    "UPDATE items SET name = 'y' WHERE id = 1 "
    f"/*db_driver='psycopg2%3A2.9.9',traceparent='{TRACEPARENT_2.replace('-', '%2D')}',"
    "tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/;"
)
PARTITION_SELECT = "SELECT count(*) FROM events WHERE at >= '2025-01-01';"
EXECUTE = "EXECUTE find(7, 'x, y');"

WORKLOAD = "\n".join([
    "CREATE TABLE items (id int PRIMARY KEY, name text);",
    INSERT,
    MULTILINE_SELECT,
    UPDATE,
    UPDATE_ENCODED,
    "CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);",
    "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO "
    "('2026-01-01');",
    "INSERT INTO events VALUES (1, '2025-05-05');",
    PARTITION_SELECT,
    "PREPARE find(int, text) AS SELECT id FROM items WHERE id = $1 OR name = $2;",
    EXECUTE,
    f"SELECT '{END_MARKER}';",
])

Lines = list[tuple[int, bytes]]


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgInstance]:
    yield from postgres_fixture(tmp_path_factory)


def _read(path: Path) -> Lines:
    return list(enumerate(path.read_bytes().splitlines(keepends=True), start=1))


@pytest.fixture(scope="module")
def audit_logs(pg: PgInstance) -> tuple[dict[str, Lines], int, int]:
    """Runs the workload as role alice in database shop; the three logs once complete, and
    the wall-clock window (ns) the statements ran in."""
    started = time.time_ns()
    pg.psql("CREATE ROLE alice LOGIN;\nCREATE DATABASE shop OWNER alice;")
    pg.psql(BLANK_LINE_SELECT, user="alice", dbname="shop", verbatim=True)
    pg.psql(WORKLOAD, user="alice", dbname="shop")  # one session: statement ids 1, 2, …
    ended = time.time_ns()
    # The logging collector writes asynchronously: wait until every file has the last line.
    deadline = time.monotonic() + 20
    logs: dict[str, Lines] = {}
    while time.monotonic() < deadline:
        logs = {kind: _read(path) for kind in KINDS for path in pg.log_files(kind)}
        if len(logs) == len(KINDS) and all(
            any(END_MARKER.encode() in line for _, line in lines) for lines in logs.values()
        ):
            return logs, started, ended
        time.sleep(0.1)
    raise AssertionError(f"the logs never got the workload's audit lines: {sorted(logs)}")


def _key(rec: AuditRecord) -> tuple[object, ...]:
    """What must be the same whichever format the record was read from."""
    return (rec.name, rec.user_id, rec.time_unix_nano, rec.traceparent, rec.attributes,
            rec.flags, rec.client_address)


def _alice(lines: Lines, kind: str) -> list[AuditRecord]:
    return [r for r in parse(lines, kind).rows() if r.user_id == "alice"]


def _by_statement(records: list[AuditRecord], statement: str) -> list[AuditRecord]:
    assert records
    return [r for r in records if r.attributes and r.attributes.get("db.query.text") == statement]


# --- the real server --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_detect_format_recognizes_each_real_log(audit_logs: tuple, kind: str) -> None:
    logs, _, _ = audit_logs
    assert detect_format([line for _, line in logs[kind][:50]]) == kind


def test_same_audit_records_in_all_three_formats(audit_logs: tuple) -> None:
    logs, _, _ = audit_logs
    batches = {kind: parse(lines, kind) for kind, lines in logs.items()}
    assert {b.source for b in batches.values()} == {SOURCE}
    keys = {kind: [_key(r) for r in b.rows()] for kind, b in batches.items()}
    assert len(keys["stderr"]) >= 14
    assert keys["stderr"] == keys["csvlog"] == keys["jsonlog"]
    # Detected format gives the same as the explicit one.
    for kind, lines in logs.items():
        assert [_key(r) for r in parse(lines).rows()] == keys[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_real_records_fields_and_attributes(audit_logs: tuple, kind: str) -> None:
    logs, started, ended = audit_logs
    records = _alice(logs[kind], kind)
    for rec in records:
        assert rec.flags == [] and rec.truncation_reasons == [], rec.raw
        assert rec.time_unix_nano is not None
        # %m / log_time / timestamp have ms resolution: allow a ms either side of the window.
        assert started - 1_000_000 <= rec.time_unix_nano <= ended + 1_000_000
        assert rec.client_address is None  # a unix-socket connection ("[local]")
        assert rec.source == SOURCE

    (insert,) = _by_statement(records, INSERT)  # the quoted commas and quotes intact
    assert insert.name == "INSERT public.items"
    assert insert.attributes == {
        "db.system.name": "postgresql",
        "db.operation.name": "INSERT",
        "db.collection.name": "public.items",
        "db.query.text": INSERT,
        "db.namespace": "shop",
        "pgaudit.audit_type": "SESSION",
        "pgaudit.class": "WRITE",
        "pgaudit.statement_id": 2,
        "pgaudit.substatement_id": 1,
        "pgaudit.object_type": "TABLE",
    }
    assert insert.traceparent is None

    (create,) = [r for r in records if r.attributes and r.name == "CREATE TABLE"
                 and r.attributes["pgaudit.statement_id"] == 1]
    assert create.name == "CREATE TABLE"  # DDL on a plain table: no object in pgaudit's line
    assert create.attributes is not None
    assert create.attributes["pgaudit.class"] == "DDL"
    assert "db.collection.name" not in create.attributes

    (select,) = _by_statement(records, MULTILINE_SELECT)  # every line
    assert select.name == "SELECT public.items"
    assert select.attributes is not None and select.attributes["pgaudit.class"] == "READ"
    (blank,) = _by_statement(records, BLANK_LINE_SELECT)  # blank line and own TAB kept
    assert blank.name == "SELECT"

    (update,) = _by_statement(records, UPDATE)
    assert update.traceparent == TRACEPARENT
    (update_encoded,) = _by_statement(records, UPDATE_ENCODED)
    assert update_encoded.traceparent == TRACEPARENT_2

    # With log_relation, one line per relation of the statement (the partition too, which
    # pgaudit 1.7 logs as class MISC, command "???"), all with the statement's id.
    partition = _by_statement(records, PARTITION_SELECT)
    assert "SELECT public.events" in {r.name for r in partition}
    assert len({r.attributes["pgaudit.statement_id"] for r in partition if r.attributes}) == 1

    executed = [r for r in records if r.attributes
                and r.attributes.get("pgaudit.parameter") is not None]
    assert [r.attributes["pgaudit.parameter"] for r in executed if r.attributes] == ['7,"x, y"']


@pytest.mark.parametrize("kind", KINDS)
def test_real_line_numbers_point_at_first_physical_line(audit_logs: tuple, kind: str) -> None:
    logs, _, _ = audit_logs
    physical = dict(logs[kind])
    records = parse(logs[kind], kind).rows()
    for rec in records:
        assert rec.line is not None and isinstance(rec.raw, str)
        first = physical[rec.line].decode().rstrip("\n")
        assert rec.raw.split("\n")[0] == first
        assert "AUDIT: " in first
    (select,) = _by_statement(records, MULTILINE_SELECT)
    assert select.line is not None
    following = [r.line for r in records if r.line is not None and r.line > select.line]
    if kind == "jsonlog":
        assert following[0] == select.line + 1  # "\n" escaped inside the one JSON line
    else:
        # Four lines of statement: three more physical lines (stderr: each after a TAB).
        assert following[0] == select.line + 4
        assert physical[select.line + 1].startswith(b"\t" if kind == "stderr" else b"       ")


def test_real_stderr_logical_records(audit_logs: tuple) -> None:
    logs, _, _ = audit_logs
    entries = list(logical_records(logs["stderr"], "stderr"))
    (first, text), = [e for e in entries if "FROM items\n" in e[1].replace("\n\t", "\n")]
    assert text.endswith("\n\t  FROM items\n\t WHERE id = 1;\",<none>")  # TABs kept as written
    assert dict(logs["stderr"])[first].startswith(b"20")
    (first, text), = [e for e in entries if "a blank line follows" in e[1]]
    # The blank line is a lone TAB; the statement's own TAB follows PostgreSQL's.
    assert text.endswith("'a blank line follows'\n\t\n\t\t AS note\",<none>")


def test_real_stderr_with_explicit_prefix(audit_logs: tuple) -> None:
    logs, _, _ = audit_logs
    given = [_key(r) for r in parse(logs["stderr"], "stderr", LOG_LINE_PREFIX).rows()]
    assert given == [_key(r) for r in parse(logs["stderr"], "stderr").rows()]


# --- pure: logical records ---------------------------------------------------------------------


def test_logical_records_stderr_tab_continuations() -> None:
    lines = [
        (10, b"2026-01-01 00:00:00.000 UTC [1] LOG:  first\n"),
        (11, b"\tsecond line\n"),
        (12, b"\t\tindented third\n"),
        (13, b"2026-01-01 00:00:00.001 UTC [1] LOG:  next"),
        (14, b""),
        (15, b"\torphan continuation"),
    ]
    assert list(logical_records(lines, "stderr")) == [
        (10, "2026-01-01 00:00:00.000 UTC [1] LOG:  first\n\tsecond line\n\t\tindented third"),
        (13, "2026-01-01 00:00:00.001 UTC [1] LOG:  next"),
        (15, "\torphan continuation"),
    ]


def test_logical_records_csvlog_quoted_newlines_and_cut_record() -> None:
    lines = [
        (1, b'2026-01-01 00:00:00.000 UTC,"a","d",1,,s,1,,t,,0,LOG,00000,"AUDIT: x,""multi\n'),
        (2, b'line"" y",,,,,,,,,"",client backend,,0\n'),
        (3, b'2026-01-01 00:00:00.001 UTC,"a","d",1,,s,2,,t,,0,LOG,00000,"cut here\n'),
        (4, b'2026-01-01 00:00:00.002 UTC,"a","d",1,,s,3,,t,,0,LOG,00000,"whole",,\n'),
        (5, b"\n"),
    ]
    assert [(n, text.count("\n")) for n, text in logical_records(lines, "csvlog")] == [
        (1, 1), (3, 0), (4, 0),
    ]


def test_logical_records_jsonlog_one_per_line() -> None:
    lines = [(1, b'{"message":"a"}\n'), (2, b"\n"), (3, b'{"message":"b\\nc"}')]
    assert list(logical_records(lines, "jsonlog")) == [
        (1, '{"message":"a"}'), (3, '{"message":"b\\nc"}'),
    ]


# --- pure: prefixes -----------------------------------------------------------------------


def test_prefix_regex_debian_default_with_q() -> None:
    regex = prefix_regex("%m [%p] %q%u@%d ")
    m = regex.match("2025-11-26 15:01:12.807 UTC [22211] alice@myserver@shop LOG:  AUDIT: x")
    assert m is not None
    assert m["time"] == "2025-11-26 15:01:12.807 UTC" and m["pid"] == "22211"
    assert (m["user"], m["database"]) == ("alice@myserver", "shop")  # Azure-style role kept
    assert (m["severity"], m["message"]) == ("LOG", "AUDIT: x")
    postmaster = regex.match("2025-11-26 15:01:12.609 UTC [22196] LOG:  starting PostgreSQL")
    assert postmaster is not None and postmaster["user"] is None


def test_prefix_regex_escapes() -> None:
    regex = prefix_regex("%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h %%%c %x %v %e ")
    m = regex.match(
        "2025-11-26 15:01:12 CET [7]: [3-1] user=bob,db=shop,app=my app,client=10.0.0.9 "
        "%6b0849b8.56c3 0 3/13 00000 LOG:  AUDIT: y"
    )
    assert m is not None
    assert (m["user"], m["database"], m["application_name"], m["host"]) == (
        "bob", "shop", "my app", "10.0.0.9",
    )
    assert (m["session_id"], m["vxid"], m["sql_state"], m["line_num"]) == (
        "6b0849b8.56c3", "3/13", "00000", "3",
    )
    padded = prefix_regex("%n %-8u|%r ").match("1764169272.609 bob     |10.0.0.9(5432) LOG:  z")
    assert padded is not None and (padded["epoch"], padded["user"]) == ("1764169272.609", "bob")
    assert prefix_regex("%Y%m ").match("2025-11-26 15:01:12.609 UTC LOG:  w") is not None


def test_parse_with_configured_prefix_and_zones() -> None:
    prefix = "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h "
    lines = [
        (1, "2025-11-26 16:00:00 CET [7]: [3-1] user=bob,db=shop,app=psql,client=10.0.0.9 "
            "LOG:  AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<none>\n"),
        (2, "2025-11-26 12:00:00 -03 [7]: [4-1] user=bob,db=shop,app=psql,client=10.0.0.9 "
            "LOG:  AUDIT: SESSION,2,1,READ,SELECT,,,SELECT 2,<none>\n"),
        (3, "2025-11-26 12:00:00 XYZ [7]: [5-1] user=bob,db=shop,app=psql,client=10.0.0.9 "
            "LOG:  AUDIT: SESSION,3,1,READ,SELECT,,,SELECT 3,<none>\n"),
        (4, "2025-11-26 12:00:00 UTC [7]: [6-1] user=bob,db=shop,app=psql,client=10.0.0.9 "
            "ERROR:  relation \"nope\" does not exist\n"),
    ]
    rows = parse(lines, "stderr", prefix).rows()
    assert len(rows) == 3  # the ERROR entry is not an audit record
    expected = 1764169200_000_000_000  # 2025-11-26 15:00:00 UTC
    assert [r.time_unix_nano for r in rows] == [expected, expected, None]
    assert rows[2].unparsed == ("time",)  # an ambiguous/unknown zone is not guessed
    assert {(r.user_id, r.client_address) for r in rows} == {("bob", "10.0.0.9")}
    assert rows[0].attributes is not None and rows[0].attributes["db.namespace"] == "shop"
    assert rows[0].name == "SELECT" and rows[0].line == 1


def test_parse_without_prefix_falls_back_to_generic_reading() -> None:
    line = "[2025-11-26 15:00:00.250 UTC] pid=9 alice@shop | LOG:  AUDIT: OBJECT,4,2,WRITE," \
           "DELETE,TABLE,public.t,DELETE FROM t,<none>"
    (rec,) = parse([(5, line)], "stderr").rows()
    assert rec.time_unix_nano == 1764169200_250_000_000
    assert (rec.user_id, rec.name, rec.line) == ("alice", "DELETE public.t", 5)
    assert rec.attributes is not None and rec.attributes["pgaudit.audit_type"] == "OBJECT"


# --- pure: damaged lines -----------------------------------------------------------------


PREFIX = "2025-11-26 15:00:00.000 UTC [9] alice@shop LOG:  "


def test_cut_audit_line_is_a_malformed_record() -> None:
    lines = [
        (1, PREFIX + 'AUDIT: SESSION,3,1,READ,SELECT,TABLE,public.items,"SELECT id,\n'),
        (2, "\t       name\n"),
        (3, PREFIX + "AUDIT: SESSION,4,1,READ\n"),
        (4, PREFIX + "AUDIT: SESSION,x,1,READ,SELECT,,,SELECT 1,<none>\n"),
    ]
    cut, short, bad_id = parse(lines, "stderr").rows()
    assert cut.flags == [flags.MALFORMED] and cut.truncation_reasons == []
    assert cut.name == "SELECT public.items" and cut.line == 1
    assert cut.attributes is not None
    assert cut.attributes["db.query.text"] == "SELECT id,\n       name"  # what is there
    assert cut.attributes["pgaudit.statement_id"] == 3
    assert short.flags == [flags.MALFORMED] and short.name is None
    assert short.attributes == {
        "db.system.name": "postgresql", "db.namespace": "shop", "pgaudit.audit_type": "SESSION",
        "pgaudit.class": "READ", "pgaudit.statement_id": 4, "pgaudit.substatement_id": 1,
    }
    assert bad_id.flags == [flags.MALFORMED]
    assert all(r.time_unix_nano == 1764169200_000_000_000 for r in (cut, short, bad_id))


def test_line_at_a_size_cap_is_truncated_size_limit() -> None:
    head = PREFIX + 'AUDIT: SESSION,5,1,WRITE,INSERT,TABLE,public.t,"INSERT INTO t VALUES (\''
    line = (head + "x" * (2048 - len(head))).encode()
    assert len(line) in SIZE_CAPS
    (rec,) = parse([(1, line + b"\n")], "stderr").rows()
    assert rec.truncation_reasons == [flags.SIZE_LIMIT]
    assert rec.flags == [flags.truncated(flags.SIZE_LIMIT)]  # explained: not also malformed
    # One byte shorter: no cap explains the damage.
    (other,) = parse([(1, line[:-1])], "stderr").rows()
    assert other.flags == [flags.MALFORMED]


def test_cut_jsonlog_line_is_json_cut_with_salvaged_message() -> None:
    line = ('{"timestamp":"2025-11-26 15:00:00.000 UTC","user":"alice","dbname":"shop",'
            '"message":"AUDIT: SESSION,6,1,WRITE,UPDATE,TABLE,public.t,\\"UPDATE t SET a = 1 '
            '/*traceparent=\'' + TRACEPARENT + "'*/\\u00")
    (rec,) = parse([(3, line)], "jsonlog").rows()
    assert rec.truncation_reasons == [flags.JSON_CUT]
    assert rec.flags == [flags.truncated(flags.JSON_CUT)]
    assert (rec.user_id, rec.name, rec.line) == ("alice", "UPDATE public.t", 3)
    assert rec.traceparent == TRACEPARENT  # the comment was written before the cut


def test_cut_csvlog_record_is_malformed_and_next_record_survives() -> None:
    lines = [
        (1, b'2025-11-26 15:00:00.000 UTC,"alice","shop",9,"[local]",s,1,"SELECT",'
            b'2025-11-26 15:00:00 UTC,3/1,0,LOG,00000,"AUDIT: SESSION,1,1,READ,SELECT,,,'
            b'""SELECT 1,\n'),
        (2, b'2025-11-26 15:00:01.000 UTC,"alice","shop",9,"10.1.2.3:5000",s,2,"SELECT",'
            b'2025-11-26 15:00:00 UTC,3/2,0,LOG,00000,"AUDIT: SESSION,2,1,READ,SELECT,,,'
            b'SELECT 2,<none>",,,,,,,,,"psql","client backend",,0\n'),
    ]
    cut, whole = parse(lines, "csvlog").rows()
    assert (cut.line, cut.flags, cut.name) == (1, [flags.MALFORMED], "SELECT")
    assert (whole.line, whole.flags, whole.client_address) == (2, [], "10.1.2.3")
    assert whole.time_unix_nano == 1764169201_000_000_000


def test_audit_text_without_its_container_is_malformed() -> None:
    (stray,) = parse([(2, "AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<none>")], "stderr").rows()
    assert (stray.flags, stray.name, stray.line) == ([flags.MALFORMED], "SELECT", 2)
    broken_json = '{"timestamp":1,"message":"AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<none>",}'
    (broken,) = parse([(1, broken_json)], "jsonlog").rows()
    assert (broken.flags, broken.name) == ([flags.MALFORMED], "SELECT")


def test_non_audit_and_foreign_lines_are_not_records() -> None:
    lines = [(1, b'{"msec":"1.0","status":"200"}'), (2, b"hello"), (3, b"")]
    assert detect_format([raw for _, raw in lines]) is None
    assert len(parse(lines)) == 0
    assert len(parse([(1, PREFIX + "connection authorized: user=alice")], "stderr")) == 0


# --- pure: sqlcommenter --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (f"SELECT 1 /*traceparent='{TRACEPARENT}'*/", TRACEPARENT),
        (f"SELECT 1 /*action='list',traceparent='{TRACEPARENT}',route='%2Fv1'*/;", TRACEPARENT),
        (f"SELECT 1 /*traceparent='{TRACEPARENT.replace('-', '%2D')}'*/", TRACEPARENT),
        (f"SELECT 1 /*traceparent='{TRACEPARENT.upper()}'*/", TRACEPARENT),
        (f"/*traceparent='{TRACEPARENT_2}'*/ SELECT 1 /*tag='x'*/", TRACEPARENT_2),
        (f"SELECT 1 /*traceparent='{TRACEPARENT_2}'*/ /*traceparent='{TRACEPARENT}'*/",
         TRACEPARENT),  # the last comment is sqlcommenter's
        ("SELECT 1 /*traceparent='00-" + "0" * 32 + "-00f067aa0ba902b7-01'*/", None),
        ("SELECT 1 /*traceparent='not-a-traceparent'*/", None),
        ("SELECT '/*'", None),
        ("SELECT 1", None),
    ],
)
def test_sqlcomment_traceparent(statement: str, expected: str | None) -> None:
    assert sqlcomment_traceparent(statement) == expected


def test_statement_larger_than_csv_field_limit() -> None:
    statement = "SELECT '" + "x, " * 100_000 + "'"  # 300 KB, over csv's default 128 KiB
    line = PREFIX + 'AUDIT: SESSION,1,1,READ,SELECT,,,"' + statement + '",<none>'
    (rec,) = parse([(1, line)], "stderr").rows()
    assert rec.flags == [] and rec.attributes is not None
    assert rec.attributes["db.query.text"] == statement
