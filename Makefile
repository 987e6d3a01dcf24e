# canarylab — the commands a newcomer types. Each target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint lock demo bench clean

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

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info reports .pytest_cache
