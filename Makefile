# One command to run the app, one to run every test. Both set everything up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY := .venv/bin/python
UV_VERSION := 0.13.9
UV := .tools/bin/uv
BUN_DIR := tools/bun
AXE := tools/axe/node_modules/axe-core/axe.min.js
export PATH := $(CURDIR)/$(BUN_DIR)/node_modules/.bin:$(PATH)
export REFLEX_USE_SYSTEM_BUN := 1
export REFLEX_TELEMETRY_ENABLED := false
PG_TEST_URL ?= postgresql://root@127.0.0.1:5432/test

.PHONY: help setup run test test-sqlite test-postgres browsers lint format bench reliability

help:
	@echo "make run    set up and start the app (SQLite + local Stripe sandbox) on http://localhost:8000"
	@echo "make test   set up and run all tests (SQLite and PostgreSQL legs side by side, then the browser tests)"
	@echo "make setup  the pinned venv (.venv) and bun (tools/bun) only, as production needs (README, Production)"
	@echo "make test-sqlite / make test-postgres   one leg of make test each (the SQLite one with the browser tests)"
	@echo "make lint   ruff check + format check (make format fixes what it can)"
	@echo "make reliability   slow fault tests: kill -9, PostgreSQL outage, live fuzz (~7 min)"
	@echo "make bench  benchmarks against a bare baseline, writes bench/results.md (~12 min)"

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install -q "uv==$(UV_VERSION)"

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet
	@touch $@

$(BUN_DIR)/node_modules/.bin/bun: $(BUN_DIR)/package.json $(BUN_DIR)/package-lock.json
	cd $(BUN_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(AXE): tools/axe/package.json tools/axe/package-lock.json
	cd tools/axe && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

setup: .venv/.synced $(BUN_DIR)/node_modules/.bin/bun

# Chromium for the browser tests, and axe-core, which they inject to audit each page.
browsers: $(AXE)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Migrates, seeds the demo admin/user (credentials printed), starts the Stripe sandbox
# and `reflex run --env prod` on one port (PORT, default 8000). Ctrl-C stops both.
run: setup
	.venv/bin/billing-app demo run

# The database legs run side by side (each mostly waits on one core: its database, its
# servers), then the browser tests run alone, as their timing wants. Every leg runs to
# the end; the run fails if any did. The PostgreSQL leg's output follows the SQLite one's;
# it runs in a process group of its own (set -m), so Ctrl-C or a kill stops it too.
PG_LOG := .pytest-postgres.log
test: setup browsers lint
	@echo "PostgreSQL leg: running beside the SQLite leg, its output below when both end"
	@mkdir -p .pytest-tmp
	@set -m; $(MAKE) --no-print-directory test-postgres PYTEST_ARGS="--basetemp=.pytest-tmp/postgres" > $(PG_LOG) 2>&1 & pg=$$!; \
	set +m; trap 'kill -TERM -- -$$pg 2>/dev/null; exit 130' INT TERM; \
	$(PY) -m pytest -q -m "not browser" --basetemp=.pytest-tmp/sqlite; sqlite=$$?; \
	wait $$pg; postgres=$$?; trap - INT TERM; \
	echo "----- PostgreSQL leg -----"; cat $(PG_LOG); \
	echo "----- browser tests (SQLite) -----"; \
	$(PY) -m pytest -q -m browser --basetemp=.pytest-tmp/browser; browser=$$?; \
	echo "SQLite leg: exit $$sqlite, PostgreSQL leg: exit $$postgres, browser tests: exit $$browser"; \
	[ $$sqlite -eq 0 ] && [ $$postgres -eq 0 ] && [ $$browser -eq 0 ]

# Each leg alone, one after the other (what `make test` runs, without the overlap).
test-sqlite: setup $(AXE)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The PostgreSQL leg runs when a server answers (always in CI). It leaves out the Stripe
# sandbox's own tests: the sandbox has no database, and the SQLite leg runs them.
test-postgres: setup
	@if $(PY) -c "import psycopg,sys; psycopg.connect('$(PG_TEST_URL)', connect_timeout=3)" 2>/dev/null; then \
		TEST_DATABASE_URL=$(PG_TEST_URL) $(PY) -m pytest -q -m "not browser" --ignore=tests/sandbox $(PYTEST_ARGS); \
	elif [ -n "$$CI" ]; then echo "PostgreSQL at $(PG_TEST_URL) is required in CI" >&2; exit 1; \
	else echo "PostgreSQL not reachable at $(PG_TEST_URL): skipping the PostgreSQL leg"; fi

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# Benchmarks (not part of `make test`): each figure against a bare baseline measured in the
# same run, on SQLite and PostgreSQL; prints a table and writes bench/results.md.
# Sizes: BENCH_DURATION, BENCH_EVENTS, BENCH_USERS, BENCH_DBS (see bench/README.md).
bench: setup
	$(PY) -m bench.run

# Slow fault tests (crash with kill -9, PostgreSQL outage, live fuzz, big storms) plus the
# fast ones, on SQLite, then on PostgreSQL when it answers (required in CI).
reliability: setup
	RUN_RELIABILITY=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/reliability
	@if $(PY) -c "import psycopg,sys; psycopg.connect('$(PG_TEST_URL)', connect_timeout=3)" 2>/dev/null; then \
		RUN_RELIABILITY=1 TEST_DATABASE_URL=$(PG_TEST_URL) $(PY) -m pytest -q -s -p no:cacheprovider tests/reliability; \
	elif [ -n "$$CI" ]; then echo "PostgreSQL at $(PG_TEST_URL) is required in CI" >&2; exit 1; \
	else echo "PostgreSQL not reachable at $(PG_TEST_URL): skipping the PostgreSQL leg"; fi
