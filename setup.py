"""The C extensions (everything else is in pyproject.toml), each on a measured hot path and each
with a Python path giving the same values:

- audit_guard.integrity._links: the integrity chain's link loop, with OpenSSL's SHA-256 — the
  per-record hashing was the measured hot spot of the chain (issue #14; docs/integrity.md#cost).
  Python path: ~0.6 µs a record more.
- audit_guard.sources._audit_json: lines of the shipped nginx format decoded into columns, equal
  values shared (issue #11; docs/benchmark.md). Python path: msgspec, a struct a line.
- audit_guard.sources._columns: the commonest case of three column conversions (ints, seconds
  → ns, texts) in one pass each (issue #11). Python path: audit_guard.sources.columns.
- audit_guard._span_rows: a batch's spans joined from their fields' columns in one pass, ids
  and times packed on the way (issue #11). Python path: span_encoding.join_rows_python.
- audit_guard._logs_wire: OTLP logs requests of the usual shape read from their bytes, no
  message object a record (issue #11). Python path: protobuf (upb), ~0.8 µs a record more.

They need a C compiler and OpenSSL's headers (Debian: gcc, libssl-dev; scripts/bootstrap installs
them). `optional`: where they are missing the package still installs and runs the Python paths;
tests/unit/integrity/test_links_native.py, tests/unit/sources/test_audit_json_native.py,
tests/unit/sources/test_columns_native.py, tests/unit/spans/test_span_rows_native.py and
tests/unit/otlp/test_wire.py fail in a dev setup without them."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "audit_guard.integrity._links", ["processor/audit_guard/integrity/_links.c"],
    libraries=["crypto"], optional=True), Extension(
    "audit_guard.sources._audit_json", ["processor/audit_guard/sources/_audit_json.c"],
    optional=True), Extension(
    "audit_guard._logs_wire", ["processor/audit_guard/_logs_wire.c"], optional=True), Extension(
    "audit_guard.sources._columns", ["processor/audit_guard/sources/_columns.c"],
    optional=True), Extension(
    "audit_guard._span_rows", ["processor/audit_guard/_span_rows.c"], optional=True)])
