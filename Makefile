# Each target creates .venv itself; `make test` and `make demo` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint deps sysdeps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

# Debian packages the mesh and its tests use (iptables, iproute2) and the benchmark's anchors.
sysdeps:
	@scripts/install-sysdeps

deps: $(STAMP) sysdeps

demo: deps
	$(BIN)/weft demo

test: deps
	$(BIN)/python -m pytest -q

bench: deps
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
