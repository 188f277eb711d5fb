"""The fault matrix (`make faults`, issue #11): the real chain on loopback, one fault per row.

    traffic → nginx → access log (+ error log, app log) → collector (collector-config/
    audit-guard.yaml) → `audit-guard serve` → recording OTLP backend (straight, as shipped)

Modules:
- lines: access lines in the shipped log format (backlog lines, poisoned lines);
- backend: the recording OTLP trace backend (its own process, steered by a control file);
- traffic: a bounded, rate-limited keep-alive HTTP client for nginx;
- chain: starts, kills, restarts and stops the real programs of one row;
- measure: written / delivered / lost / rewritten / spooled / duplicates for one row;
- scenarios: the rows (one fault each);
- harness: runs rows, prints the table (scripts/faults.py is its command line).
"""
