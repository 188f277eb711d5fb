"""What `verify` found: the report, in the JSON `audit-guard verify` prints (a public contract:
the problem kinds are listed in audit_guard.integrity.verify)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Problem", "Report"]


@dataclass
class Problem:
    kind: str
    detail: str
    chain: str | None = None
    seq: int | None = None
    where: str | None = None
    trace_id: str | None = None
    span_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Report:
    records: int = 0
    digests: int = 0
    chains: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"intact": self.intact, "records": self.records, "digests": self.digests,
                "chains": self.chains, "problems": [p.as_dict() for p in self.problems],
                "warnings": self.warnings}
