# nscfate — set-up, the main job, tests. Every install step lives here (CI starts from nothing).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONWARNINGS := ignore
DEMO_ARGS ?= experiment=cpu_baseline
UI_PORT ?= 5000
SERVE_PORT ?= 5001
SERVE_MODEL ?= models:/nscfate@champion
# where the registry is: this checkout's database, or a team server (http://...; login from the environment)
SERVE_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
PYTEST_ARGS ?=
# make test's pytest-xdist workers (one per core; 0 runs in one process). Whole files go to one worker
# so a module's expensive fixture (the registry's champion) is built once.
TEST_WORKERS ?= auto

.PHONY: help venv demo ui serve tracking-server slurm browser test test-slow test-all lint format bench bench-sweep clean

help:
	@echo "make demo      set up .venv and run the main job (train + evaluate + track)"
	@echo "make ui        open the MLflow UI on mlruns/ (127.0.0.1:5000)"
	@echo "make serve     serve models:/nscfate@champion on 127.0.0.1:5001"
	@echo "make tracking-server  team MLflow server: PostgreSQL store, proxied artifacts (127.0.0.1:5000)"
	@echo "make slurm     a single-node SLURM cluster on this machine (Debian's slurm-wlm + munge; root)"
	@echo "make browser   install Debian's chromium (for the end-to-end UI test; needs root)"
	@echo "make test      set up .venv (with test extras) and run the test suite"
	@echo "make test-slow the long end-to-end and fault tests (CI runs them too)"
	@echo "make test-all  both"
	@echo "make lint      ruff check + format check"
	@echo "make bench     generator speed and difficulty benchmarks"
	@echo "make bench-sweep  pruning vs no pruning, 12-trial sweeps (slow)"

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

# The main job: generate the default synthetic dataset (first run only), train the default model,
# evaluate the test split and the independent conditions, log everything to MLflow, print a summary.
demo: $(VENV)/.installed
	$(BIN)/nscfate-train $(DEMO_ARGS)

# Serve the champion over HTTP (MLflow's scoring server; uvicorn must be on PATH, hence the venv's bin).
serve: $(VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_TRACKING_URI=$(SERVE_TRACKING_URI) \
	  $(BIN)/mlflow models serve -m $(SERVE_MODEL) --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

# The MLflow UI on this checkout's tracking database, bound to this machine only.
ui: $(VENV)/.installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

# The team tracking server: mlflow server on a PostgreSQL backend store (database created when
# missing) with proxied artifacts (--serve-artifacts) in TRACKING_ARTIFACTS (a folder, or s3://...),
# on 127.0.0.1 unless TRACKING_HOST says otherwise. TRACKING_AUTH=1 adds MLflow's basic-auth app
# whose admin is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (from the environment only).
TRACKING_BACKEND ?= postgresql+psycopg2://postgres@127.0.0.1:5432/nscfate_mlflow
TRACKING_ARTIFACTS ?= $(CURDIR)/mlruns/server-artifacts
TRACKING_HOST ?= 127.0.0.1
TRACKING_PORT ?= 5000
TRACKING_AUTH ?=
tracking-server: $(VENV)/.installed
	TRACKING_BACKEND=$(TRACKING_BACKEND) TRACKING_ARTIFACTS=$(TRACKING_ARTIFACTS) \
	  TRACKING_HOST=$(TRACKING_HOST) TRACKING_PORT=$(TRACKING_PORT) TRACKING_AUTH=$(TRACKING_AUTH) \
	  TRACKING_STATE=$(CURDIR)/mlruns/server $(BIN)/python -m nscfate.cli.tracking_server

# A single-node SLURM cluster on this machine (installs Debian's slurm-wlm and munge when missing,
# writes /etc/slurm/slurm.conf, starts munged, slurmctld and slurmd); tests/test_slurm.py runs it too.
slurm:
	bash tests/slurm/setup.sh

# Debian's Chromium, driven headless by tests/test_ui_browser.py (installed once; CI runs as root).
browser: /usr/bin/chromium

/usr/bin/chromium:
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

test: $(VENV)/.installed-test | browser
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The long end-to-end and fault tests (a lab export trained with the defaults, the browser, killed
# workers, DDP, planted passwords, debug presets on the default data): CI runs them after make test.
# Each test's time is listed at the end (setup, call and teardown of 1 s or more).
test-slow: $(VENV)/.installed-test | browser
	$(BIN)/pytest -m slow --durations=0 --durations-min=1 $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test | browser
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check nscfate tests benchmarks hydra_plugins
	$(BIN)/ruff format --check nscfate tests benchmarks hydra_plugins

format: $(VENV)/.installed-test
	$(BIN)/ruff format nscfate tests benchmarks hydra_plugins
	$(BIN)/ruff check --fix nscfate tests benchmarks hydra_plugins

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/synth_speed.py
	$(BIN)/python benchmarks/synth_difficulty.py

# Two 12-trial sweeps (median pruner vs none) on CPU: about 11 minutes on 2 cores.
bench-sweep: $(VENV)/.installed
	$(BIN)/python benchmarks/sweep_pruning.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
