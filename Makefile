# Two entry points, both working on a fresh Debian 12 machine (root): `make demo` and `make test`.
# Each creates the virtual environment, installs wove with its extras, and starts the local Slurm
# cluster (scripts/local-slurm.sh, idempotent) before running. `make test-fast` runs every test that
# needs no cluster (no Slurm, no apt), as an unprivileged user, in under two minutes.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Jobs run `python -m wove.backend_worker`; with the venv first on PATH (exported to jobs by sbatch's
# default --export=ALL) they find the same interpreter and wove as the weave that submitted them.
RUN := env PATH="$(BIN):$$PATH"
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
# The unprivileged account `make test-fast` runs as when started by root (created if missing).
TEST_USER ?= wove-test

.PHONY: install slurm demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]" --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed
	@# Bytecode ahead of time: environments with PYTHONDONTWRITEBYTECODE=1 would otherwise recompile wove
	@# in every Slurm job (about 8 ms per job start).
	$(BIN)/python -m compileall -q wove

slurm:
	scripts/local-slurm.sh start

demo: install slurm
	$(RUN) $(BIN)/python examples/slurm_pipeline.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install slurm lint
	$(RUN) CI=$${CI:-} $(PYTEST) --durations=15 $(PYTEST_ARGS)

# As root, scripts/test-fast.sh drops to an unprivileged user ($(TEST_USER)) with a TMPDIR of its own; tests
# that need root (the multi-user ones) skip.
test-fast: install
	WOVE_TEST_USER=$(TEST_USER) scripts/test-fast.sh $(PYTEST_ARGS)

bench: install slurm
	$(RUN) $(BIN)/python benchmarks/core_overhead.py
	$(RUN) $(BIN)/python benchmarks/dispatch.py
	$(RUN) $(BIN)/python benchmarks/slurm_throughput.py
	$(RUN) $(BIN)/python benchmarks/slurm_failure_detection.py

clean:
	rm -rf $(VENV) build *.egg-info
