"""Audit rules: YAML-defined JMESPath conditions flagged as `rule:<name>` (docs/rules.md, issue 5).

`RuleSet` is an immutable compiled set (`RuleSet.builtin()`, `from_yaml`, `from_files`);
`RuleRegistry` holds the active set, swaps it atomically on reload and counts matches.
"""

from __future__ import annotations

from ..grammar.jmes import CompiledExpression, ExpressionError, compile_expression, is_truthy
from .ruleset import (
    SEVERITIES,
    VIEW_KEYS,
    Rule,
    RuleError,
    RuleRegistry,
    RuleSet,
    batch_record_view,
    record_view,
)

__all__ = [
    "SEVERITIES",
    "VIEW_KEYS",
    "CompiledExpression",
    "ExpressionError",
    "Rule",
    "RuleError",
    "RuleRegistry",
    "RuleSet",
    "batch_record_view",
    "compile_expression",
    "is_truthy",
    "record_view",
]
