"""The one result type every doctor check produces, and the helpers to build and rank them.

A finding is written for an operator reading it at 3 a.m.: what is wrong (title), where we saw
it (evidence: file, line, value), why it loses or hides audit data (why), what to change (fix).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Evidence", "Finding", "Level", "exit_code", "worst"]


class Level(enum.IntEnum):
    """Ordered so that max() over findings gives the worst one (and the exit code)."""

    OK = 0
    WARN = 1
    FAIL = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Evidence:
    """Where the finding comes from. `line` is 1-based; None when the source has no lines
    (a live database, a docker inspect field)."""

    file: str | None = None
    line: int | None = None
    value: str | None = None

    def where(self) -> str:
        if self.file is None:
            return "-"
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Finding:
    check: str  # stable id, e.g. "nginx.proxy_buffering": scripts filter on it
    subsystem: str  # nginx | docker | app | postgres | collector
    level: Level
    title: str
    evidence: Evidence = field(default_factory=Evidence)
    why: str = ""
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["level"] = str(self.level)
        return data


def worst(findings: list[Finding]) -> Level:
    return max((f.level for f in findings), default=Level.OK)


def exit_code(findings: list[Finding]) -> int:
    # 0 ok, 1 warn, 2 fail: the Level values are the exit codes by construction.
    return int(worst(findings))
