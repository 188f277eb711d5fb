"""The admin API's rule endpoints: GET /api/rules (the active set), PUT /api/rules (replace it:
bearer token required) and POST /api/rules/test (evaluate on one record, read-only).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import yaml
from fastapi import Depends, FastAPI, Request
from pydantic import ValidationError

from ..rules import RuleError, RuleRegistry, RuleSet
from .errors import AdminError, error_responses
from .models import RULE_LIST, RulesOut, RulesReplaced, RuleTestIn, RuleTestOut

log = logging.getLogger("audit_guard.admin.app")  # the name the API logged under before the split

MAX_RULES_BODY = 1024 * 1024  # a rule set is a few KiB; refuse anything absurd before parsing
# A JMESPath condition is a line or two; a long one is an attempt to make evaluation expensive.
MAX_EXPRESSION_CHARS = 4096
MAX_TEST_RECORD_BYTES = 64 * 1024
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml",
               "text/plain")

_PUT_RULES_DESCRIPTION = (
    "Body: a YAML rule list (`application/yaml` or `text/plain`) or a JSON list of "
    "rules. The set is compiled as a whole: with any error nothing changes and the "
    "answer is 422 naming each rule and the position in its expression. On success it "
    "replaces the active set atomically. The new set lives in memory only: the next "
    "reload of the configured rule files (SIGHUP, or a file change) replaces it.")
_PUT_RULES_BODY = {"requestBody": {"required": True, "content": {
    # Structured, like JSON: schemathesis and other clients serialize it as YAML.
    "application/yaml": {"schema": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/RuleIn"}}},
    "text/plain": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/RuleIn"}}},
}}}


def _check_schema(data: list[Any], source: str) -> None:
    """The documented schema (RuleIn) on top of the loader's checks: it is stricter in a few
    corners (`labels: null`, non-string descriptions) and the API must accept what it says."""
    try:
        RULE_LIST.validate_python(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            where = f"rule #{int(loc[0]) + 1}" if loc and isinstance(loc[0], int) else "body"
            key = ".".join(str(p) for p in loc[1:]) or "(rule)"
            problems.append(f"{where} (file {source}): {key}: {err.get('msg', '')}")
        raise RuleError(problems) from None


def _compile_yaml_rules(text: str, source: str) -> RuleSet:
    """Compiled by the same loader as a rules file (same checks, same messages with rule #
    positions and YAML line/column), then held to the documented schema."""
    new_set = RuleSet.from_yaml(text, source)
    _check_schema(yaml.safe_load(text), source)  # parsed fine just above: a list
    return new_set


def _compile_json_rules(data: Any, source: str) -> RuleSet:
    """A JSON list of rules, dumped as YAML (which keeps the order, so the rule #positions) and
    compiled like a YAML body."""
    if not isinstance(data, list):
        raise RuleError([f"file {source}: expected a JSON list of rules, got "
                         f"{type(data).__name__}"])
    try:
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, RecursionError) as exc:
        raise RuleError([f"file {source}: cannot read the rules: {exc}"]) from None
    return _compile_yaml_rules(text, source)


def _rules_from_body(body: bytes, media: str) -> RuleSet:
    """The rule set a PUT /api/rules body holds, or the AdminError that answers it."""
    source = "PUT /api/rules"
    try:
        if media == "application/json":
            try:
                data = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise AdminError(422, f"body is not valid JSON: {exc}") from None
            return _compile_json_rules(data, source)
        if media in _YAML_TYPES:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AdminError(422, f"body is not UTF-8: {exc}") from None
            return _compile_yaml_rules(text, source)
        raise AdminError(415, f"unsupported content type {media!r}: send "
                              "application/yaml, text/plain or application/json")
    except RuleError as exc:
        raise AdminError(422, "rule set refused; the previous set stays active",
                         exc.errors) from None
    except RecursionError:
        raise AdminError(422, "rule set refused: nested too deeply") from None


def _test_rules(body: RuleTestIn, rules: RuleRegistry) -> RuleTestOut:
    # What one evaluation may cost is bounded by the record's size and the expression's length
    # (MAX_EXPRESSION_CHARS): a sample record is small, a large one is an attempt to burn CPU.
    size = len(json.dumps(body.record.model_dump(), default=str))
    if size > MAX_TEST_RECORD_BYTES:
        raise AdminError(413, f"record is {size} bytes as JSON; a sample record for "
                              f"/api/rules/test is at most {MAX_TEST_RECORD_BYTES}")
    if body.rule is not None:
        try:
            rule_set = _compile_json_rules([body.rule.model_dump()], "request")
        except RuleError as exc:
            raise AdminError(422, "rule refused", exc.errors) from None
    else:
        rule_set = rules.current
    view = body.record.model_dump()
    errors: Counter[str] = Counter()
    started = time.perf_counter_ns()
    matched = rule_set.evaluate_record(view, errors)
    elapsed = (time.perf_counter_ns() - started) / 1000
    return RuleTestOut(matches=matched, evaluated=len(rule_set), errors=sorted(errors),
                       elapsed_us=elapsed, active_set=body.rule is None)


def add_rule_routes(app: FastAPI, rules: RuleRegistry, rules_view: Callable[[], RulesOut],
                    require_token: Callable[..., None],
                    test_token: Callable[..., None] | None, read: list[Any]) -> None:
    """The rule endpoints; `test_token`: the check POST /api/rules/test needs (None: open),
    `read`: the dependencies of the read endpoints."""
    @app.get("/api/rules", summary="The active audit rules", tags=["rules"],
             response_model=RulesOut, dependencies=read,
             description="Every active rule with its source file and match/error counts.")
    def get_rules() -> RulesOut:
        return rules_view()

    @app.put(
        "/api/rules", summary="Replace the active audit rules", tags=["rules"],
        response_model=RulesReplaced, dependencies=[Depends(require_token)],
        responses=error_responses(401, 403, 413, 415, 422),
        description=_PUT_RULES_DESCRIPTION, openapi_extra=copy.deepcopy(_PUT_RULES_BODY),
    )
    async def put_rules(request: Request) -> RulesReplaced:
        body = await request.body()
        if len(body) > MAX_RULES_BODY:
            raise AdminError(413, f"rule set larger than {MAX_RULES_BODY} bytes")
        media = request.headers.get("content-type", "text/plain").split(";")[0].strip().lower()
        new_set = _rules_from_body(body, media)
        rules.replace(new_set)
        log.info("audit rules replaced over the admin API: %d rule(s): %s",
                 len(new_set), ", ".join(new_set.names))
        return RulesReplaced(active=list(new_set.names), count=len(new_set),
                             note="in memory until the next reload of the configured rule files")

    @app.post("/api/rules/test", summary="Evaluate rules on one record", tags=["rules"],
              response_model=RuleTestOut, responses=error_responses(400, 401, 403, 413, 422),
              dependencies=[Depends(test_token)] if test_token is not None else [],
              description="Evaluates `rule` (when given) or the active set on `record`. "
                          "Read-only: nothing is counted or changed. Needs the token unless "
                          "admin.rules_test_open; the expression is at most "
                          f"{MAX_EXPRESSION_CHARS} characters.")
    def test_rules(body: RuleTestIn) -> RuleTestOut:
        return _test_rules(body, rules)
