# canarylab — the commands a newcomer types. Each target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint lock demo bench bench-chain bench-client bench-proxy bench-sequential bench-locust wrk clean

install: $(STAMP)

# The venv is rebuilt only when the lock or the package metadata changes.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

test: install
	$(BIN)/pytest -m "not slow"

# Everything, including the long load runs (CI runs this).
test-all: install
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
bench: bench-chain bench-client bench-proxy bench-sequential bench-locust

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

wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

clean:
	rm -rf $(VENV) build *.egg-info reports .pytest_cache
