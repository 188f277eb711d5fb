"""The written forms the sources and the doctor read — times, sizes — one module each, so the
same text means the same value everywhere (audit_guard.grammar.timestamps, .sizes)."""
