"""What doctor shows of a connection string or a log driver's options: never a secret.

A PostgreSQL DSN carries its password in three forms — `scheme://user:secret@host`, a URI
query `?password=secret`, a key/value `password=secret` (quoted or not) — and libpq reads a few
more secret-bearing keys (`sslpassword`). Docker log options carry tokens and credentials
(`splunk-token`, `loki-url` with `user:secret@`, `awslogs-credentials-endpoint`…). Each is shown
with the secret replaced by `***`."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "redact_dsn", "redact_options", "redact_text"]

MASK = "***"
_SECRET_KEYS = re.compile(r"pass|secret|token|credential|key", re.IGNORECASE)
_NOT_SECRET = frozenset({"sslkey", "sslcert", "sslrootcert", "keepalives", "keepalives_idle",
                         "keepalives_interval", "keepalives_count", "max-file", "max-size"})
# key = value, the value bare or single-quoted with \' and \\ escapes (libpq's grammar)
_KEY_VALUE = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"
                        r"(?P<value>'(?:[^'\\]|\\.)*'|[^\s']+)")


def _secret_key(key: str) -> bool:
    return key.lower() not in _NOT_SECRET and bool(_SECRET_KEYS.search(key))


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}{':' + MASK if colon else ''}@{hostport}"
        query = urlencode([(k, MASK if _secret_key(k) else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                          safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not even a URL: mask everything after the scheme
        return url.partition("://")[0] + "://" + MASK


def redact_dsn(dsn: str) -> str:
    """A libpq connection string (URI or key/value) with every secret replaced by ***."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", dsn.strip()):
        return _redact_url(dsn.strip())
    return _KEY_VALUE.sub(
        lambda m: f"{m['key']}={MASK}" if _secret_key(m["key"]) else m.group(0), dsn)


def redact_options(options: dict[str, str]) -> dict[str, str]:
    """Log driver options with secret values (by key) and URL passwords replaced."""
    out = {}
    for key, value in options.items():
        if _secret_key(key):
            out[key] = MASK
        elif "://" in value:
            out[key] = _redact_url(value)
        else:
            out[key] = value
    return out


def redact_text(text: str, dsn: str) -> str:
    """An error message about `dsn` without the secrets the DSN holds (drivers may echo them)."""
    secrets = [m["value"].strip("'") for m in _KEY_VALUE.finditer(dsn) if _secret_key(m["key"])]
    if "://" in dsn:
        parts = urlsplit(dsn.strip())
        if parts.password:
            secrets.append(parts.password)
        secrets += [v for k, v in parse_qsl(parts.query) if _secret_key(k)]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
