# Every target bootstraps .venv on first use. `make run` sets up, indexes corpus/ and serves;
# `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
STORE ?= var/store

.PHONY: setup index run test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

index: setup
	$(BIN)/ragqa-index corpus --store $(STORE)

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench.index_throughput

lint: setup
	$(BIN)/ruff check indexer service tests bench
	$(BIN)/ruff format --check indexer service tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var build *.egg-info
