# One entry point for people and CI. `make run` and `make test` work on a
# fresh machine: they create the virtual environment and install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run` needs only the runtime dependencies (a fresh machine installs in
# seconds); `make test` and `make install` add the dev ones (pytest, mypy, moto...).
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: install install-runtime run test lint typecheck unit sanitize bench clean

$(RUNTIME_STAMP): pyproject.toml setup.py src/bsky_backfill/repo/_native.c src/bsky_backfill/records/_formats.c \
		$(wildcard src/bsky_backfill/records/native/*.[ch])
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

# Three workers on two cores: most tests wait (servers, timers, subprocesses).
unit: install
	$(BIN)/pytest -q -n 3

# The C extensions built with AddressSanitizer and UBSan (into build/asan, never
# the installed copy) and their twin and fuzz tests run against them: an
# out-of-bounds read or undefined behaviour on any generated or mutated CAR, or
# on any fuzzed string a format check reads, aborts the run.
ASAN_DIR := build/asan
sanitize: install
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r setup.py pyproject.toml README.md src $(ASAN_DIR)/
	find $(ASAN_DIR)/src -name '*.so' -delete
	cd $(ASAN_DIR) && CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g" \
		LDFLAGS="-fsanitize=address,undefined" $(abspath $(BIN))/python setup.py -q build_ext --inplace
	PYTHONPATH=$(ASAN_DIR)/src \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		BSKY_BACKFILL_NATIVE_FROM=$(abspath $(ASAN_DIR)) \
		$(BIN)/pytest -q -p no:cacheprovider tests/repo/test_native.py tests/repo/test_native_fuzz.py \
		tests/repo/test_native_walk.py tests/records/test_formats_twin.py \
		tests/records/test_native_pass.py tests/records/test_native_lexcheck.py \
		tests/records/test_native_json.py

test: lint typecheck unit sanitize

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
