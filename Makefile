# The same commands run here, in pre-commit and in CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-packages demo up test unit integration lint typecheck bench chaos clean wheel-smoke

# the compiled fast paths (setup.py) rebuild when their C sources change
$(BIN)/.installed: pyproject.toml setup.py processors/_lpfast.c pipeline/wire/_avrofast.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded,weather]'
	touch $@

install: $(BIN)/.installed

# Debian packages the tests use (promtool); installs only what is missing.
system-packages:
	.ci/install-system-packages

# The main job on the embedded default: broker, ClickHouse endpoint, PostgreSQL, workers, demo data.
demo: install
	$(BIN)/pipeline up --demo

up: install
	$(BIN)/pipeline up

# The whole suite: lint, types, unit and integration tests (the suite starts its own services).
test: install system-packages lint typecheck
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

lint: install
	$(BIN)/ruff check pipeline processors sinks tests benchmarks
	$(BIN)/ruff format --check pipeline processors sinks tests benchmarks

typecheck: install
	$(BIN)/mypy processors pipeline sinks

# Build the wheel, install it in a fresh venv, run datums through it (also run by .ci/run).
wheel-smoke:
	.ci/wheel-smoke

# Every fault drill at 10%, 50% and 90% of a drain, judged by the exact-set oracle; prints the table
# (tests/chaos; the normal suite runs a reduced set).
chaos: install
	$(BIN)/python -m tests.chaos

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
