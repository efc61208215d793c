# conflux has two commands: `make run` and `make test`. Both set themselves up first (a .venv with the pins of
# pyproject.toml, the one place where versions live), so a fresh clone needs nothing installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
CORES ?= all
export PATH := $(BIN):$(PATH)
# pip installs without compiling (--no-compile below): byte-compiling all of torch, transformers, sympy and
# the rest took ~35 s of a ~55 s set-up, for modules no job imports. Python writes the .pyc of what a job
# imports instead, once, at its first import; where PYTHONDONTWRITEBYTECODE is set (CI images) it would not,
# and every job would compile torch and transformers again (~8 s instead of ~4 s per job).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test setup setup-dev lint format dryrun clean

# What the workflow needs; `make run` installs nothing more (the test and lint tools are the dev extra's).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	touch $@

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

## Run the whole default workflow (tiny model built offline, synthetic and bundled data).
run: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

## Run every test; pytest's "no tests collected" (exit 5) counts as a failure.
test: setup-dev
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: setup-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/snakefmt --check Snakefile rules \
		&& $(BIN)/snakemake --lint && $(BIN)/lint-imports --no-cache

format: setup-dev
	$(BIN)/ruff check --fix . && $(BIN)/ruff format . && $(BIN)/snakefmt Snakefile rules

dryrun: setup
	$(BIN)/snakemake -n --profile profiles/local

clean:
	rm -rf results logs benchmarks .snakemake report.html
