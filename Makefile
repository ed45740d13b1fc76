# Eventfold — two commands: `make run` (set up everything, run the system) and
# `make test` (set up what the tests need, run the whole suite with the quality gates).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help venv infra infra-down status run lint typecheck unit docs chromium promtool test bench bench-tables soak clean screenshots

help:
	@echo "make run        set up (venv, local Kafka/PostgreSQL/Redis/S3) and run Eventfold"
	@echo "make test       set up and run lint, type checks and the whole test suite"
	@echo "make infra      start the local stack only      make infra-down   stop it"
	@echo "make unit       fast unit tests only (no services)"
	@echo "make docs       the documentation site (docs/, MkDocs, --strict) into build/site/"
	@echo "make screenshots  the console's screenshots in docs/screenshots/ (browser tests)"
	@echo "make bench      the benchmark suite with its peers, then BENCHMARKS.md's tables"
	@echo "                (QUICK=1: the quick sizes; SMOKE=1: tiny, checks the suite, not quoted)"
	@echo "make bench-tables  rewrite BENCHMARKS.md's tables from the newest result files"
	@echo "make soak       30 minutes of writes and reads; memory of every process over time"
	@echo "make .env       docker-compose.yml's secrets, freshly random (never overwrites one)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	@touch $(STAMP)

venv: $(STAMP)

infra: venv
	$(BIN)/eventfold infra up

infra-down: venv
	$(BIN)/eventfold infra down

status: venv
	$(BIN)/eventfold infra status

run: infra
	$(BIN)/eventfold run

lint: venv
	$(BIN)/ruff check src tests benchmarks docsite
	$(BIN)/ruff format --check src tests benchmarks docsite
	$(BIN)/lint-imports
	$(BIN)/eventfold schemas check

typecheck: venv
	$(BIN)/mypy

unit: venv promtool
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

# The documentation site: docs/ plus the reference pages docsite/ generates from the
# code at build time; --strict (mkdocs.yml) fails on any broken link or anchor.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# The console's browser tests drive Debian's chromium (Playwright's own download cannot
# work here): installed when missing.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# infra/prometheus is checked by promtool (Debian's prometheus package) from
# tests/unit/test_monitoring.py: installed when missing, its server never left running.
promtool:
	@command -v promtool >/dev/null || sh infra/prometheus/install-promtool.sh

test: lint typecheck docs infra chromium promtool
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The README's console screenshots (docs/screenshots/*.png), written by the browser tests.
screenshots: infra chromium
	EVENTFOLD_SCREENSHOTS=1 $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_console.py

bench: infra
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.suite $(if $(SMOKE),--smoke,$(if $(QUICK),--quick)) $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.tables

bench-tables: venv
	$(BIN)/python -m benchmarks.tables

soak: infra
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.suite.soak $(SOAK_ARGS)

# Made only when missing: regenerating would lock the running stack out of its data.
.env:
	@umask 077 && sh infra/compose/new-env.sh .env.example > .env.tmp && mv .env.tmp .env
	@echo "wrote .env (mode 0600): docker-compose.yml's secrets; keep it out of git"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
