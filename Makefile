# Quick start: `make demo` (set up + run the end-to-end demo) and `make test` (set up + run the test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mixq-installed
LITERT_STAMP := $(VENV)/.mixq-litert-installed
# Extra arguments for `mixq demo`, e.g. make demo DEMO_ARGS="--quick --out /tmp/report"
DEMO_ARGS ?=

.PHONY: venv demo test test-nightly lint bench clean

# The stamp depends on pyproject.toml, so installing twice is a no-op; a broken venv is rebuilt.
$(STAMP): pyproject.toml
	@if [ -d $(VENV) ] && ! $(BIN)/python -c "import sys" >/dev/null 2>&1; then \
		echo "mixq: $(VENV) is broken (its python does not run); rebuilding it"; rm -rf $(VENV); fi
	@[ -d $(VENV) ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

# The tests also run the LiteRT and OpenVINO backends with their real runtimes: the optional extras (~0.8 GB and
# ~0.2 GB), installed on top.
$(LITERT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,litert,openvino]"
	@$(BIN)/python -c "import torch; v = torch.__version__.split('+')[0]; assert v == '2.13.0', v" \
		|| { echo "mixq: installing mixq[litert,openvino] moved torch off 2.13.0"; exit 1; }
	@touch $(LITERT_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mixq demo $(DEMO_ARGS)

# One pytest-xdist worker per core (a test file stays on one worker, so its fixtures are built once); each worker
# runs torch on one thread (tests/conftest.py). TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

test: $(LITERT_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# What make test leaves out to stay within minutes: the documentation's slow examples (LiteRT, HF, decoders, demo).
test-nightly: $(LITERT_STAMP)
	$(BIN)/python -m pytest -q -m nightly -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ptq.py

clean:
	rm -rf $(VENV) mixq-report .pytest_cache
