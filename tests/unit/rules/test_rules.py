"""Audit rules (audit_guard.rules): built-in rule semantics, the compiled fast path against the
jmespath library, batch evaluation against one-by-one evaluation, loading and reloading."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import jmespath
import pytest

from audit_guard.grammar.jmes import root_reads
from audit_guard.record import RecordBatch
from audit_guard.rules import (
    RuleError,
    RuleRegistry,
    RuleSet,
    batch_record_view,
    compile_expression,
    record_view,
)

# -- built-in rules --------------------------------------------------------------------------


def _rec(**kw: Any) -> dict[str, Any]:
    view = {"user_id": "u1", "app_id": "a1", "method": "GET", "path": "/v1/parameters",
            "route": None, "status": 200, "source": "nginx", "flags": [], "fields": {}}
    view.update(kw)
    return view


BUILTIN_CASES = [
    # (rule, record, matches)
    ("dataset_access_denied", _rec(path="/v1/datasets/ds-1/documents", status=403), True),
    ("dataset_access_denied", _rec(path="/v1/datasets/", status=403), True),
    ("dataset_access_denied", _rec(path="/v1/datasets/ds-1/documents", status=200), False),
    ("dataset_access_denied", _rec(path="/v1/datasets", status=403), False),
    ("dataset_access_denied", _rec(path="/v1/chat-messages", status=403), False),
    ("dataset_access_denied", _rec(path=None, status=403), False),
    ("model_config_change", _rec(method="PUT", path="/v1/model-configs"), True),
    ("model_config_change", _rec(method="POST", path="/v1/model-configs"), True),
    ("model_config_change", _rec(method="DELETE", path="/v1/model-configs/m1"), True),
    ("model_config_change",
     _rec(method="POST", path="/console/api/workspaces/current/model-providers/openai"), True),
    ("model_config_change",
     _rec(method="DELETE", path="/console/api/workspaces/current/model-providers"), True),
    ("model_config_change", _rec(method="GET", path="/v1/model-configs"), False),
    ("model_config_change",
     _rec(method="GET", path="/console/api/workspaces/current/model-providers"), False),
    ("model_config_change", _rec(method="PUT", path="/v1/model-configsx"), False),
    ("model_config_change", _rec(method="PATCH", path="/v1/model-configs"), False),
    ("model_config_change", _rec(method=None, path="/v1/model-configs"), False),
    ("model_config_change", _rec(method="PUT", path=None), False),
    ("auth_failure", _rec(status=401), True),
    ("auth_failure", _rec(status=403), False),
    ("auth_failure", _rec(status=None), False),
    ("rate_limited", _rec(status=429), True),
    ("rate_limited", _rec(status=430), False),
    ("server_error_on_audited_path", _rec(status=502, path="/v1/chat-messages"), True),
    ("server_error_on_audited_path", _rec(status=500, path="/console/api/apps"), True),
    ("server_error_on_audited_path", _rec(status=503, path="/api/passport"), True),
    ("server_error_on_audited_path", _rec(status=502, path="/healthz"), False),
    ("server_error_on_audited_path", _rec(status=499, path="/v1/chat-messages"), False),
    ("server_error_on_audited_path", _rec(status=None, path="/v1/chat-messages"), False),
    ("server_error_on_audited_path", _rec(status=500, path=None), False),
    ("unknown_user", _rec(user_id=None, path="/v1/chat-messages"), True),
    ("unknown_user", _rec(user_id="", path="/console/api/apps", source="app"), True),
    ("unknown_user", _rec(user_id="u1", path="/v1/chat-messages"), False),
    ("unknown_user", _rec(user_id=None, path="/static/app.js"), False),
    ("unknown_user", _rec(user_id=None, path="/v1/chat-messages", source="pgaudit"), False),
    ("unknown_user", _rec(user_id=None, path=None), False),
]


@pytest.mark.parametrize(("name", "record", "expected"), BUILTIN_CASES)
def test_builtin_rule(name: str, record: dict[str, Any], expected: bool) -> None:
    rules = RuleSet.builtin()
    assert rules[name].matches(record) is expected
    errors: Counter[str] = Counter()
    assert (name in rules.evaluate_record(record, errors)) is expected
    assert not errors  # the built-in rules are written not to fail on missing values


def test_builtin_set_shape() -> None:
    rules = RuleSet.builtin()
    assert rules.names == ("dataset_access_denied", "model_config_change", "auth_failure",
                           "rate_limited", "server_error_on_audited_path", "unknown_user",
                           "stale_event")
    for rule in rules:
        assert rule.description and rule.labels and rule.severity
        assert rule.compiled is not None and not rule.compiled.fallback_nodes  # all native
        assert rule.flag == f"rule:{rule.name}"


# -- fast path == library ----------------------------------------------------------------------

EXPRESSIONS = [
    *(r.when for r in RuleSet.builtin()),
    "status == `403`", "status != `403`", "status < `500`", "status >= `500`", "status > `1`",
    "status <= `0`", "path < 'b'", "status < path", "user_id > app_id",
    "user_id == `null`", "user_id == ''", "user_id != ''", "!user_id", "!status", "!fields.a",
    "status == `1`", "status == `0`", "status == `true`", "status != `false`",
    "user_id == `0`", "fields.a == `1`", "fields.a == `0.0`", "fields.a == fields.b",
    "fields.a != fields.b", "fields.a < fields.b", "fields.a == `[1]`", "fields.a == `{}`",
    "status || user_id", "status && user_id", "user_id || app_id || 'none'",
    "starts_with(path, '/v1/')", "ends_with(path || '', 's')", "starts_with(user_id, '')",
    "contains(path, 'data')", "contains(fields.a, `1`)", "contains(flags, 'missing_field:user_id')",
    "contains(`[\"PUT\", \"POST\"]`, method)", "contains(user_id, status)",
    "length(flags) > `0`", "length(user_id)", "length(fields.a)", "to_string(status)",
    "to_string(fields.a)", "to_number(user_id)", "to_number(status) > `400`",
    "to_number(fields.a)", "fields.a", "fields.b.c", "fields.list[0]", "fields.list[-1]",
    "fields.list[5]", "fields.b.c.d", "fields.\"weird-key\"", "fields.list | [0]",
    # node types that go to the library's interpreter
    "fields.list[?@ > `1`]", "fields.list[*]", "length(fields.list[*]) > `1`", "fields.*",
    "[status, path]", "{s: status, p: path}", "fields.list[1:]", "fields.list[]",
    "@.status", "@", "not_null(user_id, app_id)", "max(fields.list)", "abs(status)",
    "type(fields.a)", "sort_by(fields.objs, &k)", "fields.a | length(@)",
    "status == `403` && fields.list[?@ == `2`]", "fields.objs[?k == `1`].k",
]

_SCALARS: list[Any] = [None, "", "u1", "x", "0", "/v1/x", 0, 1, 2, 403, 500, -1, 0.0, 1.0, 2.5,
                       True, False, [], {}, [1, 2], [True], {"k": 1}, "data/set"]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 2 and roll < 0.1:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 2 and roll < 0.15:
        return {k: _random_value(rng, depth + 1) for k in rng.sample(["a", "b", "c", "k"], 2)}
    return rng.choice(_SCALARS)


def _random_view(rng: random.Random) -> dict[str, Any]:
    """A record view with anything anywhere: wrong types, missing keys, nesting."""
    view: dict[str, Any] = {
        "user_id": rng.choice([None, "", "u1", "u2", 0, 1, True, [], "0"]),
        "app_id": rng.choice([None, "", "a1", "b", 2]),
        "method": rng.choice([None, "GET", "PUT", "POST", "DELETE", "", 1]),
        "path": rng.choice([None, "", "/v1/datasets/d/x", "/v1/model-configs", "/api/x",
                            "/console/api/workspaces/current/model-providers/o", "/", 7, "b"]),
        "route": rng.choice([None, "/v1/datasets/{dataset_id}"]),
        "status": rng.choice([None, 0, 1, 200, 401, 403, 429, 500, 502, 599, "403", True, 2.5]),
        "source": rng.choice(["nginx", "app", "pgaudit"]),
        "flags": rng.choice([[], ["missing_field:user_id"], ["a", "b"], None, "flag"]),
        "fields": {
            "a": _random_value(rng), "b": _random_value(rng), "weird-key": _random_value(rng),
            "list": rng.choice([[], [1, 2, 3], [3, "x"], None, "s", [2]]),
            "objs": rng.choice([[{"k": 2}, {"k": 1}], [{"k": "a"}, {"k": 1}], [], None]),
        },
    }
    for key in list(view):
        if rng.random() < 0.05:
            del view[key]
    return view


def _outcome(fn: Any, view: Any) -> tuple[str, Any]:
    try:
        return ("ok", repr(fn(view)))
    except Exception as exc:  # the exception class must match too
        return ("error", type(exc).__name__)


def test_fast_path_matches_library() -> None:
    rng = random.Random(5)
    views = [_random_view(rng) for _ in range(2500)]
    fallbacks = set()
    for expression in EXPRESSIONS:
        compiled = compile_expression(expression)
        library = jmespath.compile(expression)
        fallbacks |= compiled.fallback_nodes
        for view in views:
            assert _outcome(compiled.evaluate, view) == _outcome(library.search, view), (
                expression, view)
            # Conjunct by conjunct (as batches evaluate): the same truthiness, or the same error.
            whole = _outcome(lambda v, e=library: _lib_truthy(e.search(v)), view)
            parts: tuple[str, Any] = ("ok", repr(True))
            for evaluate, _reads in compiled.conjuncts:
                step = _outcome(evaluate, view)
                if step[0] == "error":
                    parts = step
                    break
                if not _lib_truthy(evaluate(view)):
                    parts = ("ok", repr(False))
                    break
            assert whole == parts, (expression, view)
            if whole[0] == "ok":
                assert compiled.matches(view) is _lib_truthy(library.search(view))
    # The list above does exercise the fallback.
    assert {"filter_projection", "projection", "multi_select_list"} <= fallbacks


_TRUTHY = jmespath.compile("v && `true` || `false`")


def _lib_truthy(value: Any) -> bool:
    """JMESPath truthiness, as the library computes it."""
    return bool(_TRUTHY.search({"v": value}))


def test_root_reads() -> None:
    assert root_reads(jmespath.compile("status == `1` && path").parsed) == {"status", "path"}
    assert root_reads(jmespath.compile("fields.a.b").parsed) == {"fields"}
    assert root_reads(jmespath.compile("fields.list[?user_id]").parsed) == {"fields"}
    assert root_reads(jmespath.compile("@.status").parsed) is None
    assert root_reads(jmespath.compile("length(@)").parsed) is None
    assert root_reads(jmespath.compile("`1`").parsed) == frozenset()
    compiled = compile_expression("source == 'nginx' && status == `1` && starts_with(path, '/')")
    assert [reads for _, reads in compiled.conjuncts] == [{"source"}, {"status"}, {"path"}]


# -- batch evaluation ----------------------------------------------------------------------------

BATCH_RULES = """
- {name: builtin.copy, when: "status == `403` && starts_with(path || '', '/v1/')", severity: low}
- {name: pair, when: "status == `500` || user_id == `null`", severity: info}
- {name: none-tuple, when: "user_id == app_id", severity: info}
- {name: errs, when: "starts_with(path, '/v1/')", severity: info}
- {name: ordered, when: "status < `300` && path > '/u'", severity: info}
- {name: flagged, when: "contains(flags, 'missing_field:user_id')", severity: medium}
- {name: field-read, when: "status >= `400` && fields.upstream == 'x'", severity: high}
- {name: whole, when: "length(@) > `8`", severity: info}
- {name: src, when: "source == 'app'", severity: info}
- {name: projected, when: "fields.list[?@ > `1`]", severity: info}
- {name: route, when: "route == '/v1/datasets/{dataset_id}' && method != 'GET'", severity: info}
"""


def _random_batch(rng: random.Random, size: int, source: str) -> RecordBatch:
    batch = RecordBatch(
        source, size,
        user_id=[rng.choice([None, "", "u1", "u2", "a1"]) for _ in range(size)],
        app_id=[rng.choice([None, "", "a1", "u1"]) for _ in range(size)],
        method=[rng.choice([None, "GET", "PUT", "POST"]) for _ in range(size)],
        path=[rng.choice([None, "", "/v1/datasets/x", "/v1/a", "/z", "/api/b", "x"])
              for _ in range(size)],
        route=[rng.choice([None, "/v1/datasets/{dataset_id}"]) for _ in range(size)],
        status=[rng.choice([None, 200, 403, 500, 502]) for _ in range(size)],
        fields=[{"upstream": rng.choice(["x", "y", None]),
                 "list": rng.choice([[1, 2], [0], None, "s"])} for _ in range(size)],
    )
    for i in range(size):
        if rng.random() < 0.2:
            batch.add_flag(i, rng.choice(["missing_field:user_id", "malformed"]))
    return batch


@pytest.mark.parametrize("source", ["nginx", "app"])
def test_batch_equals_per_record(source: str) -> None:
    rng = random.Random(source)
    rules = RuleSet.from_yaml(BATCH_RULES, "batch.yaml")
    rules_and_builtin = RuleSet([*RuleSet.builtin(), *rules])
    for rule_set in (rules, rules_and_builtin):
        # Several batches: the second and later ones hit the verdicts memoised by the first.
        for _ in range(4):
            batch = _random_batch(rng, rng.choice([1, 7, 300, 1024]), source)
            batch_errors: Counter[str] = Counter()
            found = rule_set.evaluate(batch, batch_errors)
            one_errors: Counter[str] = Counter()
            expected = {}
            for i in range(len(batch)):
                names = rule_set.evaluate_record(batch_record_view(batch, i), one_errors)
                if names:
                    expected[i] = names
                assert names == rule_set.evaluate_record(record_view(batch.row(i)))
            assert found == expected
            assert batch_errors == one_errors
            # starts_with(null) raises: no match, one error per such record.
            assert batch_errors["errs"] == batch.path.count(None)
            assert list(found) == sorted(found)


def test_distinct_tuples_with_none() -> None:
    """A conjunct reading two columns is keyed on (app_id, user_id) tuples that hold None."""
    rules = RuleSet.from_yaml(
        "- {name: same, when: 'user_id == app_id', severity: info}\n"
        "- {name: both-null, when: 'user_id == `null` && app_id == `null`', severity: info}\n"
        "- {name: one-null, when: '!user_id || !app_id', severity: info}\n",
    )
    assert rules["same"].compiled is not None
    assert rules["same"].compiled.conjuncts[0][1] == {"user_id", "app_id"}
    users = [None, None, "u", "u", "", None, "a", ""]
    apps = [None, "a", None, "u", None, "", "a", ""]
    batch = RecordBatch("nginx", len(users), user_id=users, app_id=apps)
    for _ in range(2):  # cold, then memoised
        assert rules.evaluate(batch) == {
            0: ["same", "both-null", "one-null"], 1: ["one-null"], 2: ["one-null"],
            3: ["same"], 4: ["one-null"], 5: ["one-null"], 6: ["same"], 7: ["same", "one-null"],
        }
    assert rules.evaluate(RecordBatch("nginx", 0)) == {}


def test_memo_is_per_source() -> None:
    rules = RuleSet.from_yaml(
        "- {name: app-500, when: \"source == 'app' && status == `500` || status == `1`\","
        " severity: info}\n")
    nginx = RecordBatch("nginx", 2, status=[500, 200])
    app = RecordBatch("app", 2, status=[500, 200])
    assert rules.evaluate(nginx) == {}
    assert rules.evaluate(app) == {0: ["app-500"]}
    assert rules.evaluate(nginx) == {}


# -- loading -------------------------------------------------------------------------------------

GOOD = """
- name: teapot
  description: I'm a teapot.
  when: status == `418`
  severity: info
  labels: {team: core}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_jmespath_names_rule_and_position() -> None:
    text = GOOD + "- {name: x, when: 'status == == `1`', severity: low}\n"
    with pytest.raises(RuleError) as info:
        RuleSet.from_yaml(text, "rules.yaml")
    message = str(info.value)
    assert message.startswith("rule 'x' (file rules.yaml, rule #2): `when` is not valid JMESPath "
                              "at position 10 near '=='")
    with pytest.raises(RuleError, match=r"at position 10: the expression is incomplete"):
        RuleSet.from_yaml("- {name: y, when: 'status == ', severity: low}", "r.yaml")
    with pytest.raises(RuleError, match=r"at position 7 near '~'"):
        RuleSet.from_yaml("- {name: y, when: 'status ~ 1', severity: low}", "r.yaml")
    with pytest.raises(RuleError, match=r"unknown function nope\(\)"):
        RuleSet.from_yaml("- {name: y, when: 'nope(status)', severity: low}", "r.yaml")
    with pytest.raises(RuleError, match=r"starts_with\(\) takes 2 argument"):
        RuleSet.from_yaml("- {name: y, when: 'starts_with(path)', severity: low}", "r.yaml")


@pytest.mark.parametrize(("text", "fragment"), [
    ("- {name: x, severity: low}", "rule 'x' (file r.yaml, rule #2): missing key `when`"),
    ("- {when: 'status', severity: low}", "rule #2 (file r.yaml): missing key `name`"),
    ("- {name: x, when: status, severity: urgent}", "`severity` must be one of info, low,"),
    ("- {name: teapot, when: status, severity: low}", "rule 'teapot' (file r.yaml, rule #2): "
                                                      "duplicate name; first defined in file "
                                                      "r.yaml, rule #1"),
    ("- {name: Bad Name, when: status, severity: low}", "`name` must match"),
    ("- {name: x, when: status, severity: low, labels: {a: 1}}", "`labels` must map strings"),
    ("- {name: x, when: status, severity: low, serverity: high}", "unknown key(s) `serverity`"),
    ("- {name: x, when: `1`, severity: low}", "not valid YAML at line 7, column 19"),
    ("- just a string", "expected a mapping"),
])
def test_invalid_rule_refuses_the_whole_set(text: str, fragment: str) -> None:
    with pytest.raises(RuleError) as info:
        RuleSet.from_yaml(GOOD + text, "r.yaml")
    assert fragment in str(info.value)


def test_every_error_is_reported() -> None:
    text = ("- {name: a, severity: low}\n- {name: b, when: 'a ==', severity: nope}\n"
            "- {name: a, when: x, severity: low}\n")
    with pytest.raises(RuleError) as info:
        RuleSet.from_yaml(text, "r.yaml")
    assert len(info.value.errors) == 4, info.value.errors  # when, JMESPath, severity, duplicate


@pytest.mark.parametrize("text", ["", "rules: []", "42"])
def test_not_a_list_is_refused(text: str) -> None:
    with pytest.raises(RuleError, match="expected a YAML list of rules"):
        RuleSet.from_yaml(text, "r.yaml")
    assert len(RuleSet.from_yaml("[]")) == 0
    with pytest.raises(RuleError, match="duplicate name"):
        RuleSet([*RuleSet.builtin(), *RuleSet.builtin()])


def test_registry_keeps_old_set_on_error_and_reloads(tmp_path: Path) -> None:
    registry = RuleRegistry()
    assert registry.current.names == RuleSet.builtin().names
    first = _write(tmp_path / "a.yaml", GOOD)
    second = _write(tmp_path / "b.yaml", "- {name: gone, when: 'status == `410`', "
                                         "severity: low}\n")
    loaded = registry.load_files([first, second])
    assert registry.current is loaded and loaded.names == ("teapot", "gone")
    batch = RecordBatch("nginx", 3, status=[418, 410, 200])
    assert registry.evaluate(batch) == {0: ["teapot"], 1: ["gone"]}

    for broken in ("- {name: teapot, when: 'status == == 1', severity: info}\n",
                   "- {name: teapot, severity: info}\n",
                   "- {name: gone, when: status, severity: info}\n",  # duplicate across files
                   "- {name: teapot, when: status, severity: severe}\n"):
        _write(first, broken)
        with pytest.raises(RuleError):
            registry.load_files([first, second])
        assert registry.current is loaded  # the old set is still active
        assert registry.evaluate(batch) == {0: ["teapot"], 1: ["gone"]}

    _write(first, GOOD.replace("`418`", "`200`"))  # the file changed: reload
    registry.load_files([first, second])
    assert registry.evaluate(batch) == {1: ["gone"], 2: ["teapot"]}
    assert registry.counts == Counter({("teapot", "info"): 6, ("gone", "low"): 6})

    with pytest.raises(RuleError, match="cannot read"):
        registry.load_files([tmp_path / "missing.yaml"])
    both = registry.load_files([first], include_builtin=True)
    assert both.names[-1] == "teapot" and "unknown_user" in both.names


def test_registry_counts_errors_and_flags() -> None:
    registry = RuleRegistry(RuleSet.from_yaml(
        "- {name: p, when: \"starts_with(path, '/v1/')\", severity: critical}\n"))
    batch = RecordBatch("nginx", 3, path=["/v1/a", None, "/x"])
    assert registry.flag(batch) == {0: ["p"]}
    assert batch.flags == {0: ["rule:p"]}
    assert registry.errors == Counter({"p": 1})
    assert registry.counts == Counter({("p", "critical"): 1})
    assert registry.evaluate_record({"path": "/v1/x"}) == ["p"]


def test_replace_is_atomic_under_concurrent_evaluation() -> None:
    one = RuleSet.from_yaml("- {name: one, when: 'status == `200`', severity: info}\n")
    two = RuleSet.from_yaml("- {name: two, when: 'status == `200`', severity: info}\n")
    registry = RuleRegistry(one)
    batch = RecordBatch("nginx", 50, status=[200] * 50)
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def evaluate() -> None:
        while not stop.is_set():
            found = registry.evaluate(batch)
            seen.add(tuple(sorted({n for names in found.values() for n in names})))

    thread = threading.Thread(target=evaluate)
    thread.start()
    for _ in range(200):
        registry.replace(two)
        registry.replace(one)
    stop.set()
    thread.join()
    assert seen <= {("one",), ("two",)}  # never a mix: each batch sees one whole set
    with pytest.raises(TypeError):
        registry.replace([])  # type: ignore[arg-type]


def test_rules_read_fields_of_shipped_format_lines() -> None:
    """Nginx lines of the shipped format decode into AuditJsonLine structs, not dicts: a rule
    over `fields.*` reads them the same, batch-wise and record by record."""
    import orjson

    from audit_guard.sources.nginx_access import AUDIT_JSON_KEYS, AuditJsonLine, parse_lines

    line = dict.fromkeys(AUDIT_JSON_KEYS, "")
    line.update(msec=1764165600.5, request_time=0.01, connection=1, connection_requests=1,
                body_bytes_sent=10, bytes_sent=99, status="200", request_method="GET",
                request_uri="/v1/x", uri="/v1/x", server_protocol="HTTP/1.0")
    other = {**line, "server_protocol": "HTTP/1.1"}
    batch = parse_lines([orjson.dumps(line), orjson.dumps(other)])
    assert isinstance(batch.fields[0], AuditJsonLine)
    rules = RuleSet.from_yaml(
        "- {name: old_http, when: \"fields.server_protocol == 'HTTP/1.0'\", severity: low}",
        "r.yaml")
    assert rules.evaluate(batch, Counter()) == {0: ["old_http"]}
    assert rules.evaluate_record(record_view(batch.row(0))) == ["old_http"]
    assert rules.evaluate_record(record_view(batch.row(1))) == []
