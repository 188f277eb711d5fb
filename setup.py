"""The one C extension (everything else is in pyproject.toml): the integrity chain's link loop,
audit_guard.integrity._links, with OpenSSL's SHA-256 — the per-record hashing was the measured
hot spot of the chain (issue #14; docs/integrity.md#cost). It needs a C compiler and OpenSSL's
headers (Debian: gcc, libssl-dev; scripts/bootstrap installs them). `optional`: where they are
missing the package still installs and the chain runs its Python loop (same values, ~0.6 µs a
record more); tests/unit/integrity/test_links_native.py fails in a dev setup without it."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "audit_guard.integrity._links", ["processor/audit_guard/integrity/_links.c"],
    libraries=["crypto"], optional=True)])
