# Every target installs what it needs first (a virtual environment in .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev,slurm]" numpy cython
	touch $@

setup: $(VENV)/.installed  ## create .venv and install dhr with its dev and slurm extras

test: setup  ## run the whole test suite
	$(PY) -m pytest -q

test-fast: setup  ## skip the tests marked slow
	$(PY) -m pytest -q -m "not slow"

demo: setup  ## train + evaluate supervised DeepLabv3+ on the generated synthetic set
	$(PY) -m dhr.train

lint: setup  ## ruff
	$(PY) -m ruff check dhr tests scripts

bench: setup  ## evaluator benchmark against the release's loop
	$(PY) scripts/bench/evaluate.py

clean:  ## remove outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
