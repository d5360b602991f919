# Every target bootstraps .venv on first use. `make run` sets up, indexes corpus/ and serves;
# `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
STORE ?= var/store

.PHONY: setup index run serve test eval bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# llama-cpp-python (the LLM server of the generative tests) builds from source: portable, any x86-64
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

index: setup
	$(BIN)/ragqa-index corpus --store $(STORE)

run: index
	$(BIN)/ragqa-serve --store $(STORE)

serve: setup
	$(BIN)/ragqa-serve --store $(STORE)

test: setup
	$(BIN)/python -m pytest

EVAL_DATA ?= ../shared/data/eval
eval: setup
	$(BIN)/ragqa-eval $(EVAL_DATA)/squad2-dev --sample 1000 --seed 0
	$(BIN)/ragqa-eval $(EVAL_DATA)/nq-open-dev --sample 1000 --seed 0

bench: setup
	$(BIN)/python -m bench.index_throughput
	$(BIN)/python -m bench.serve_latency
	$(BIN)/python -m bench.support_calibration
	$(BIN)/python -m bench.generative_latency
	$(BIN)/python -m bench.load

lint: setup
	$(BIN)/ruff check indexer service tests bench
	$(BIN)/ruff format --check indexer service tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var build *.egg-info
