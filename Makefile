# `make run` and `make test` do all the set-up: they create .venv and install the project.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: install run test test-slow test-all lint bench dashboard clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	@touch $(STAMP)

install: $(STAMP)

## The default study end to end on scikit-learn's digits (no network), 2 local workers.
run: $(STAMP)
	$(BIN)/tuner-service submit studies/digits.yaml --workers 2 --replace

## The test suite (fast part); `make test-slow` runs the slow ones (faults, guides, Ray, longer searches).
test: $(STAMP)
	$(PYTEST) -m "not slow" --timeout 600 -q

test-slow: $(STAMP)
	$(PYTEST) -m "slow" --timeout 900 -q

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check tuner_service tests benchmarks dashboards

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

dashboard: $(STAMP)
	$(BIN)/tuner-service dashboard

clean:
	rm -rf $(VENV) tuner.db tuner.db-wal tuner.db-shm tuner.db-artifacts *.egg-info
