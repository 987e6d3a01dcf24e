# canarylab — the commands a newcomer types. Each target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint lock demo bench bench-chain bench-client bench-proxy bench-sequential bench-locust bench-memory bench-instructions wrk valgrind clean

install: $(STAMP)

# The venv is rebuilt only when the lock or the package metadata changes.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

test: install checkov browser
	$(BIN)/pytest -m "not slow"

# Everything, including the long load runs (CI runs this).
test-all: install checkov browser
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

# Recompile the lock after editing requirements.in.
lock: install
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11 --quiet

# The local cluster from k8s/overlays/75-25, traffic, the observed split, the
# X-Ray service map and a report in reports/; then everything is stopped.
demo: install
	$(BIN)/canarylab demo

# Benchmarks (bench/README.md). They need wrk: Debian's package, installed here
# when missing (as root).
bench: bench-chain bench-client bench-proxy bench-sequential bench-locust bench-memory

bench-chain: install wrk
	$(BIN)/python bench/chain_bench.py

bench-client: install
	$(BIN)/python bench/client_cost.py

bench-proxy: install wrk
	$(BIN)/python bench/proxy_bench.py --app notification

bench-sequential: install
	$(BIN)/python bench/sequential_bench.py

bench-locust: install
	$(BIN)/python bench/locust_cost.py

# Memory of one replica of each service (master + workers, RSS and PSS).
bench-memory: install
	$(BIN)/python bench/memory_bench.py

# Instructions per request (callgrind): the repeatable measure on a busy machine.
bench-instructions: install valgrind
	$(BIN)/python bench/request_instructions.py

valgrind:
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)

wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

# -- the docker-compose demo (issue 4) ------------------------------------------------
# The docker-compose demo, run for real with podman (no Docker engine here):
# compose/e2e.py builds the images, starts docker-compose.yml + compose/ci.yml,
# verifies the 75/25 and 2/2 splits with Locust, the welcome mail and the X-Ray
# segments, and always tears everything down. Needs root for apt (as CI is).
.PHONY: compose-e2e podman
compose-e2e: install podman
	$(BIN)/python compose/e2e.py

# podman and what it needs here (shared/recipes/compose-on-podman), from Debian;
# installed with recommends: podman uses netavark/aardvark-dns only when present.
podman:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
	    || ! command -v debootstrap >/dev/null || ! test -x /usr/lib/podman/aardvark-dns; then \
	  apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
	    podman runc netavark aardvark-dns iptables debootstrap; fi

clean:
	rm -rf $(VENV) build *.egg-info reports .pytest_cache

# -- k8s: production manifests (issue 5) --------------------------------------------
# checkov scans the rendered manifests in tests/test_production_manifests.py. Its pinned
# dependencies clash with requirements.txt, so it gets a venv of its own, rebuilt only
# when its lock changes.
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: checkov k8s-env
checkov: $(CHECKOV_STAMP)

$(CHECKOV_STAMP): requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

# The git-ignored env files the k8s/ Secrets are generated from: each missing one is
# created from its .example, random passwords filled in, and what is left to fill in
# is printed. Existing files are never touched.
k8s-env: install
	$(BIN)/python -m canarylab.k8senv

# -- the Locust web UI tab (issue 7) -------------------------------------------------
# tests/test_webui.py drives the real Locust web UI in headless Chromium through
# chromedriver: Debian's packages, installed here when missing (CI runs as root). The
# lock timeout waits for another apt-get instead of failing at once.
.PHONY: browser
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || (apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
		chromium chromium-driver >/dev/null)
