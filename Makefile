# One entry point for people and CI. `make run` and `make test` work on a
# fresh machine: they create the virtual environment and install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run` needs only the runtime dependencies (a fresh machine installs in
# seconds); `make test` and `make install` add the dev ones (pytest, mypy, moto...).
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: install install-runtime run test lint typecheck unit bench clean

$(RUNTIME_STAMP): pyproject.toml setup.py src/bsky_backfill/repo/_native.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install-runtime: $(RUNTIME_STAMP)

install: $(STAMP)

run: install-runtime
	$(BIN)/bsky-backfill demo

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
