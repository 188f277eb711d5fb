# audit-guard — the two commands a newcomer needs:
#   make demo   start the local demo stack (nginx → collector → processor → Jaeger), drive traffic,
#               print what audit-guard found; Ctrl-C stops it (make demo ARGS=--once: exit after)
#   make test   install everything needed (apt, venv, collector and Jaeger builds), run all tests
SHELL := /bin/bash
PY := .venv/bin/python
ARGS ?=

.PHONY: setup demo test unit lint bench bench-chain fuzz faults docs clean

setup:
	@scripts/bootstrap

demo: setup
	$(PY) -m demo $(ARGS)

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -ra $(ARGS)

unit: setup
	$(PY) -m pytest -ra -m "not e2e" $(ARGS)

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) scripts/bench.py $(ARGS)

# The whole chain (issue #12): a backlog of 200,000 access lines through the real collector into one
# and then two `audit-guard serve` behind load_balancing; prints records/s end to end and CPU µs per
# record of the collector and each processor side by side, and the ratio; exits 1 when a record
# was not delivered. ARGS="--records 5000" for a quick run, "--rounds 3" to alternate.
bench-chain: setup
	$(PY) scripts/bench_chain.py $(ARGS)

# A million mutated lines of every source through the pipeline (and a share through replay):
# prints lines per source, exceptions (must be 0), records flagged, lines/s; exits 1 on any
# exception. ARGS="--seed 7" for other lines, "--lines 50000" for a short run.
fuzz: setup
	$(PY) scripts/fuzz.py $(ARGS)

# The fault matrix (issue #11): the real chain on loopback, one injected fault per row; prints
# the table, exits 1 when a row lost or rewrote records. ARGS="--only kill-collector" or --list.
faults: setup
	$(PY) scripts/faults.py $(ARGS)

# The generated reference pages: docs/configuration.md from processor/audit_guard/config.py, docs/metrics.md
# from processor/audit_guard/telemetry.py. tests/unit/project/test_docs.py fails when a checked-in page is out of date.
docs: setup
	$(PY) scripts/gendocs.py

clean:
	rm -rf .cache/demo .pytest_cache .ruff_cache
