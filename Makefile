# Each target creates .venv itself; `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test bench lint sysdeps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Debian packages: iptables and iproute2 for the local runtime, curl for tests, nginx, wrk and
# h2load for the benchmark's anchors.
sysdeps:
	@scripts/install-sysdeps

demo: $(STAMP) sysdeps
	$(BIN)/weft demo

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(BENCH_STAMP) sysdeps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info
