# Riverdelta: `make demo` runs the product, `make test` runs the tests.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
RD    := $(VENV)/bin/riverdelta
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup setup-test lock lint format up down demo test test-unit test-integration test-e2e test-slow bench clean

help: ## list every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## create .venv from requirements.lock and cache the JVM jars (idempotent, offline once cached)
	@bash scripts/setup.sh

setup-test: ## setup plus what only the tests need (playwright, Debian docker-compose and chromium)
	@bash scripts/setup.sh --test

lock: ## recompile requirements.lock and requirements-test.lock (needs network)
	$(VENV)/bin/uv pip compile -q requirements.in --python-version 3.11 -o requirements.lock
	$(VENV)/bin/uv pip compile -q requirements-test.in -c requirements.lock --python-version 3.11 -o requirements-test.lock

lint: setup ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

up: setup ## start the embedded Kafka broker (KRaft) and Airflow; create topics (KAFKA_SECURITY=sasl_ssl: secured broker)
	@$(if $(KAFKA_SECURITY),RIVERDELTA_KAFKA_SECURITY=$(KAFKA_SECURITY) )$(RD) up

down: ## stop everything `make up` started (by pid, nothing else)
	@if [ -x $(RD) ]; then $(RD) down; else echo "down: nothing installed, nothing running"; fi

demo: setup ## the main job on the embedded stack (README's first command)
	@$(RD) demo

test: setup-test lint ## lint, unit and integration tests (README's second command; CI runs this)
	@bash scripts/run_tests.sh -m "not slow" --durations=25 $(PYTEST_ARGS)

test-unit: setup-test ## unit tests only
	@bash scripts/run_tests.sh -m unit $(PYTEST_ARGS)

test-integration: setup-test ## integration tests only (starts and stops its own broker)
	@bash scripts/run_tests.sh -m integration $(PYTEST_ARGS)

test-slow: setup-test ## the long crash-recovery tests
	@bash scripts/run_tests.sh -m slow $(PYTEST_ARGS)

bench: setup ## measure Riverdelta vs raw Kafka / naive Spark (1M records, ~25 min); rewrites docs/benchmarks.md
	$(PY) -m riverdelta.bench.run --write-docs $(BENCH_ARGS)

.PHONY: soak
soak: setup ## the embedded stack left running with maintenance every 10 min (SOAK_ARGS="--minutes 60"); plot in results/
	$(PY) -m riverdelta.bench.soak $(SOAK_ARGS)

.PHONY: bench-cluster
bench-cluster: setup ## replay throughput: 2-worker Spark standalone cluster vs local[2] (200k records, ~10 min)
	$(PY) -m riverdelta.bench.cluster $(BENCH_CLUSTER_ARGS)

clean: down ## remove runtime state (.riverdelta/ except the jar cache)
	rm -rf .riverdelta/kafka .riverdelta/airflow .riverdelta/lake .riverdelta/logs .riverdelta/run
