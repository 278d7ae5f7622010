# Each target creates .venv itself; `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

COMPILED := .venv-compiled
CBIN := $(COMPILED)/bin
COMPILED_STAMP := $(COMPILED)/.installed

.PHONY: demo test bench bench-pure lint sysdeps clean compiled test-compiled images

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# weft with its per-request modules compiled by mypyc (setup.py), in its own virtualenv: a
# non-editable install (a compiled module shadows its .py, so an editable one would run stale
# code after an edit), rebuilt when any source file changes. mypyc type-checks with weft's
# dependencies installed, hence no build isolation.
$(COMPILED_STAMP): pyproject.toml setup.py $(shell find src/weft -type f -not -path '*/__pycache__/*')
	$(PY) -m venv $(COMPILED)
	$(CBIN)/pip install -q --upgrade pip
	$(CBIN)/pip install -q '.[dev,bench]' 'setuptools>=69,<81' wheel
	rm -rf build
	WEFT_MYPYC=1 $(CBIN)/pip install -q --no-build-isolation --no-deps --force-reinstall .
	rm -rf build  # its lib/ holds the .so files: a later plain `pip install .` would ship them
	touch $(COMPILED_STAMP)

compiled: $(COMPILED_STAMP)

# OCI images (proxy, control, proxy-init) in images/oci, without a Docker daemon: a Debian base
# from debootstrap (cached in .images-work), weft as the compiled build, packed by umoci
# (scripts/build-images; docs/kubernetes.md, "Images"). Needs root.
images: $(COMPILED_STAMP) sysdeps
	scripts/build-images images/oci

# Debian packages: iptables and iproute2 for the local runtime, curl for tests, nginx, wrk and
# h2load for the benchmark's anchors.
sysdeps:
	@scripts/install-sysdeps

demo: $(STAMP) sysdeps
	$(BIN)/weft demo

# The whole suite on the pure-Python build (tests/kube against the real upstream API server
# that k8s-rig builds from Go modules, about 11 minutes the first time), then the sans-I/O and
# proxy tests again on the compiled build (the one that is benchmarked and shipped). The images
# are built first: tests/e2e/test_images.py runs them.
test: $(STAMP) sysdeps k8s-rig images
	$(BIN)/python -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory test-compiled

# the benchmark measures the compiled build
bench: $(COMPILED_STAMP) sysdeps
	$(CBIN)/python -m bench.run $(BENCH_ARGS)

bench-pure: $(BENCH_STAMP) sysdeps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

test-compiled: $(COMPILED_STAMP) sysdeps
	$(CBIN)/python -c "import weft.proxy.protocol.http1.exchange as m; assert m.__file__.endswith('.so'), m.__file__"
	$(CBIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/integration -k "proxy or tls or balancer or metrics or l7"


lint: $(STAMP)
	$(BIN)/ruff check setup.py src tests bench
	$(BIN)/ruff format --check setup.py src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(COMPILED) build src/*.egg-info images .images-work

# Real upstream Kubernetes for tests (docs/kubernetes-rig.md): builds kube-apiserver,
# kube-controller-manager, kubectl and etcd from their Go modules into .k8s-rig/ (once).
.PHONY: k8s-rig
k8s-rig:
	scripts/k8s-rig build
