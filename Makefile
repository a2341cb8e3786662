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
# The whole suite, then the registry's race and lifecycle tests again in the tagged key
# layout (Redis Cluster's, here on one Redis: ATLAS_REDIS_SHARDS=4); the real 3-master
# cluster runs in tests/integration/test_cluster_*.py.
TAGGED_LAYOUT_TESTS = tests/unit/sessions tests/integration/test_durable_stop.py \
	tests/integration/test_user_index.py tests/integration/test_cost_guardrails.py \
	tests/integration/test_max_lifetime.py tests/integration/test_quota_spawn.py \
	tests/integration/test_spawn_races.py tests/integration/test_terminate_races.py \
	tests/integration/test_data_loss_guard.py tests/integration/test_events.py

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider
	ATLAS_REDIS_SHARDS=4 $(BIN)/pytest -q -p no:cacheprovider $(TAGGED_LAYOUT_TESTS)

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
