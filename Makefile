# nscfate — set-up, the main job, tests. Every install step lives here (CI starts from nothing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONWARNINGS := ignore
DEMO_DATA ?= data/demo
PYTEST_ARGS ?=

.PHONY: help venv demo test test-all lint format bench clean

help:
	@echo "make demo      set up .venv and run the main job"
	@echo "make test      set up .venv (with test extras) and run the test suite"
	@echo "make test-all  also the slow tests"
	@echo "make lint      ruff check + format check"
	@echo "make bench     run the benchmarks under benchmarks/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	@test -f $(DEMO_DATA)/dataset.json || $(BIN)/nscfate-data synth --out $(DEMO_DATA)
	$(BIN)/nscfate-data preview $(DEMO_DATA) --out $(DEMO_DATA)-preview.png
	$(BIN)/nscfate-data info $(DEMO_DATA)
	$(BIN)/nscfate-data oracle $(DEMO_DATA)
	@echo "contact sheet: $(DEMO_DATA)-preview.png"

test: $(VENV)/.installed-test
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check nscfate tests benchmarks
	$(BIN)/ruff format --check nscfate tests benchmarks

format: $(VENV)/.installed-test
	$(BIN)/ruff format nscfate tests benchmarks
	$(BIN)/ruff check --fix nscfate tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/synth_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
