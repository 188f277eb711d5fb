"""The audit record: the one normalized shape every source is parsed into.

A parser fills what its format holds; checks add flags; correlation fills ids. Nothing here
reads the clock or does I/O, so replaying a record always gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuditRecord"]


@dataclass(slots=True, eq=False)
class AuditRecord:
    source: str  # "nginx", "app", "pgaudit", … — the program that wrote the record
    # Normalized audit fields (None = not present in the record).
    time_unix_nano: int | None = None  # when the request ended (nginx: $msec)
    duration_ns: int = 0  # nginx: $request_time
    method: str | None = None
    path: str | None = None
    route: str | None = None  # the templated route, e.g. /v1/datasets/{dataset_id}
    status: int | None = None
    user_id: str | None = None
    app_id: str | None = None
    request_id: str | None = None
    traceparent: str | None = None
    client_address: str | None = None
    server_address: str | None = None
    user_agent: str | None = None
    body_bytes_sent: int | None = None
    # Response completeness evidence (proxies log these; None = not in the record).
    completed: bool | None = None  # nginx $request_completion: "OK" → True, "" → False
    content_length: int | None = None  # the Content-Length sent to the client
    upstream_length: int | None = None  # body bytes the upstream delivered (last attempt)
    compressed: bool = False  # the proxy compressed the body (smaller than upstream's is fine)
    # Names of fields present in the record but not parseable (→ invalid_field:<name>).
    unparsed: tuple[str, ...] = ()
    # Every field the record held, as written (salvaged ones too).
    fields: dict[str, Any] = field(default_factory=dict)
    # Findings, in the vocabulary of processor.flags.
    flags: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # missing_field:* / invalid_field:*
    truncation_reasons: list[str] = field(default_factory=list)
    # Correlation (filled by processor.correlate.traces).
    trace_id: bytes = b""
    span_id: bytes = b""
    parent_span_id: bytes = b""
    trace_id_generated: bool = False
    # Where the record came from (replay: file and 1-based line; service: None).
    raw: bytes | str | None = None
    file: str | None = None
    line: int | None = None

    def add_flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)
