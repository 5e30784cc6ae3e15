# The two things a user runs: `make run` (the main job) and `make test` (lint + tests).
# Both create the virtual environment $(VENV) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# Real benchmark splits for the data tests, when a copy sits beside the checkout.
ESAWD_DATA_DIR ?= $(shell [ -d ../shared/data ] && cd ../shared/data && pwd)
export ESAWD_DATA_DIR

.PHONY: run test lint install test-conditions
install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg requirements.txt requirements-test.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The main job: ES + AWD on the embedded SmolLM2-135M-Instruct (configs/default.py).
run: $(VENV)/.installed
	$(PY) -m experiments.run --config configs/default.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# .ci/env.sh first: the CPU and the jax/jaxlib/flax/torch versions, so a log says where it ran.
# One pytest-xdist worker per usable core: the suite is mostly XLA compiling tiny programs,
# which runs on one thread. XLA:CPU has segfaulted a handful of times in hundreds of suite runs
# (compiling, or serializing an executable for the persistent cache; docs/testing.md): a test
# whose worker crashes is rerun once on a fresh worker (pytest-rerunfailures; a plain failure is
# never rerun). `--dist load`: after a crash, loadgroup left the crashed worker's share of the
# tests unscheduled and the run hung, and its groups never took effect anyway.
# PYTEST_WORKERS=0 runs in this process alone.
PYTEST_WORKERS ?= $(shell nproc)
test: lint
	@.ci/env.sh $(PY)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist load --reruns 1 --only-rerun crashed --durations=15

# The numeric test files under XLA:CPU conditions that reorder reductions (docs/testing.md);
# CONDITIONS="one-core worst" picks some, ARGS="tests/test_grpo.py" other files.
test-conditions: $(VENV)/.installed
	PY=$(PY) tests/conditions.sh $(CONDITIONS) $(if $(ARGS),-- $(ARGS))
