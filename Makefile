# The two commands of the README:
#   make demo   - set everything up (venv + install) and run the demo
#   make test   - set everything up and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint typecheck bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/atlas-tasks demo

# Lint and types are part of the tests: ruff and mypy strict run first.
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

# ruff, then the package's layers (import-linter contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check atlas_tasks workers tests bench examples docs
	$(BIN)/ruff format --check atlas_tasks workers tests bench examples docs
	$(BIN)/lint-imports --no-cache

# The tests, benchmarks and examples are type-checked too (relaxed only where pyproject.toml
# says why).
typecheck: $(STAMP)
	$(BIN)/mypy atlas_tasks workers
	$(BIN)/mypy tests bench examples

bench: $(STAMP)
	$(BIN)/python -m bench

# The long chaos run (560 planned sessions, ~90 s of faults, kills and restarts); `make test`
# already runs its CI-sized version.
chaos: $(STAMP)
	ATLAS_CHAOS=long $(BIN)/pytest -q -s -p no:cacheprovider tests/chaos

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
