# Developer entry points. Everything goes through scripts/bootstrap.sh first, which
# installs what is missing (PostgreSQL, pg_cron, .venv) and is fast when nothing is.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python
ARGS ?=

.PHONY: help bootstrap test lint format typecheck demo bench clean

help:
	@echo "make test     bootstrap, lint (ruff), type-check (mypy), the tests on every pg_cron/PostgreSQL configuration (ARGS=... for pytest; SA_PGDISPATCH_MATRIX=default|managed|all)"
	@echo "make demo     bootstrap and run the demo (sa-pgdispatch demo)"
	@echo "make bench    bootstrap and run the benchmarks (ARGS=--quick for a smoke run; docs/benchmarks.md)"
	@echo "make lint     ruff + mypy only"
	@echo "make format   ruff format + import sorting"
	@echo "make clean    remove build and tool caches (keeps .venv)"

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(PY) -m ruff check src tests
	$(PY) -m mypy src

typecheck: bootstrap
	$(PY) -m mypy src

format: bootstrap
	$(PY) -m ruff check --select I --fix src tests
	$(PY) -m ruff format src tests

test: lint
	scripts/test-matrix.sh $(ARGS)

demo: bootstrap
	.venv/bin/sa-pgdispatch demo

bench: bootstrap
	$(PY) -m pip install -q -e '.[bench]' && $(PY) -m bench $(ARGS)

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +
