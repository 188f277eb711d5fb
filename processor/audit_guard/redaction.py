"""Redaction before export (issue #13): the last stage after rules, in `serve` and `replay`
alike — flags are computed on the record as written, what leaves the process is redacted.

- Secrets are scrubbed by default wherever free text goes out (paths, which may carry a query
  string; attributes such as pgaudit's `db.query.text` and nginx's error message; the raw text
  of an unprocessable record): a SQL `PASSWORD '…'`, `key=value` pairs whose key names a secret
  (`password`, `token`, `key`, `secret`, `api_key`, `access_token`, `auth`, `signature`, …)
  in query strings, connection strings and log text, and `Bearer <token>`.
- Identity fields (user_id, app_id, client_address, server_address, user_agent) are the audit:
  kept unless configured per field — `drop`, `mask`, or `pseudonym`: a keyed HMAC-SHA256 (the
  same value always maps to the same pseudonym, across restarts and instances sharing the key;
  only the key holder can link it back).

Cost on the hot path: nothing for identity fields left as they are; for text, one C-level scan
per column for the characters a secret needs (`=`, a quote, `Bearer`); the regex only runs on
the values that have them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

from .config import RedactionConfig
from .record import RecordBatch

__all__ = ["IDENTITY_FIELDS", "Redactor", "scrub"]

IDENTITY_FIELDS = ("user_id", "app_id", "client_address", "server_address", "user_agent")
MASK = "***"

_SECRET_KEY = (r"(?:password|passwd|pwd|pass|secret|token|access_token|refresh_token|id_token|"
               r"api_?key|apikey|key|auth|authorization|signature|sig|credentials?|session|"
               r"client_secret)")
_SCRUBS: list[tuple[re.Pattern[str], str]] = [
    # SQL: CREATE/ALTER ROLE|USER … [ENCRYPTED] PASSWORD 'secret' ('' escapes a quote)
    (re.compile(r"(?i)\b(PASSWORD\s+)'(?:[^']|'')*'"), r"\1'***'"),
    # key=value in query strings, connection strings, log text (a quoted or bare value)
    (re.compile(r"(?i)(?<![A-Za-z0-9_])(" + _SECRET_KEY + r")(\s*=\s*)"
                r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,)'\"]+)"), r"\1\2***"),
    (re.compile(r"(?i)\b(Bearer\s+)[A-Za-z0-9._~+/-]+=*"), r"\1***"),
]


def scrub(text: str) -> str:
    """`text` with every secret the patterns know replaced by ***."""
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def _may_hold_secret(text: str) -> bool:
    return "=" in text or "'" in text or "earer" in text


class Redactor:
    """The stage: prepared from the config once, run on each checked batch."""

    def __init__(self, config: RedactionConfig) -> None:
        self._scrub = config.scrub_secrets
        key = (config.pseudonym_key_file.read_bytes().strip()
               if config.pseudonym_key_file is not None else b"")
        actions: dict[str, Callable[[str], str | None]] = {
            "drop": lambda value: None,
            "mask": lambda value: MASK,
            "pseudonym": lambda value: "ps_" + hmac.new(
                key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:24],
        }
        self._fields = [(name, actions[action]) for name, action in config.fields.items()
                        if action != "keep"]

    @property
    def active(self) -> bool:
        return self._scrub or bool(self._fields)

    def __call__(self, batch: RecordBatch) -> None:
        for name, action in self._fields:
            setattr(batch, name, [None if v is None else action(v)
                                  for v in getattr(batch, name)])
        if not self._scrub:
            return
        for column in ("path", "name"):
            values = getattr(batch, column)
            if _may_hold_secret("\0".join(filter(None, values))):  # one C-level pass
                setattr(batch, column, [scrub(v) if v and _may_hold_secret(v) else v
                                        for v in values])
        events = batch.events
        if any(events):  # span events: e.g. the nginx error line that showed a cut
            for i, found in enumerate(events):
                if found:
                    events[i] = [(when, name, {k: scrub(v) if isinstance(v, str)
                                               and _may_hold_secret(v) else v
                                               for k, v in attrs.items()})
                                 for when, name, attrs in found]
        attributes = batch.attributes
        if not any(attributes):
            return
        for i, attrs in enumerate(attributes):
            if attrs and any(isinstance(v, str) and _may_hold_secret(v) for v in attrs.values()):
                attributes[i] = {k: scrub(v) if isinstance(v, str) else v
                                 for k, v in attrs.items()}
