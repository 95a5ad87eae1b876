# Every target installs what it needs first (a virtual environment in .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo supervised lint bench parity gpu-check gpu-wheels clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml reference/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev,slurm,pretrained,crf]" -e ./reference numpy cython
	touch $@

setup: $(VENV)/.installed  ## create .venv; install dhr with its dev, slurm, pretrained and crf extras, and the test references

test: setup  ## run the whole test suite, one worker per core (PYTEST_ARGS=... passes more options)
	$(PY) -m pytest -q -n auto $(PYTEST_ARGS)

test-fast: setup  ## skip the tests marked slow (real subprocesses: launchers, packaging, SIGKILLed DDP)
	$(PY) -m pytest -q -n auto -m "not slow" $(PYTEST_ARGS)

demo: setup  ## the weakly-supervised pipeline on the generated synthetic set: seeds, CAUSE, DHR, final model, report
	$(PY) -m dhr.pipeline

supervised: setup  ## train + evaluate supervised DeepLabv3+ on the synthetic set (the ceiling)
	$(PY) -m dhr.train

lint: setup  ## ruff
	$(PY) -m ruff check dhr tests scripts reference

bench: setup  ## benchmarks (evaluator, relabelling), compared with the figures in docs/bench-figures.json (~7 min)
	@mkdir -p outputs/bench
	$(PY) scripts/bench/evaluate.py --json outputs/bench/evaluate.json
	$(PY) scripts/bench/relabel.py --json outputs/bench/relabel.json
	$(PY) scripts/bench/compare.py outputs/bench/evaluate.json outputs/bench/relabel.json

parity: setup  ## batched relabelling vs the literal reference of the release, 512 crops with the CRF (~3 min)
	$(PY) scripts/relabel_parity.py --samples 20

# On a GPU machine: the .venv when there is one, else the machine's python3 (the steps run from this checkout).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

gpu-check:  ## the GPU acceptance run (< 8 min on one CUDA GPU): summary in outputs/gpu-check/; exits 2 without a GPU
	$(GPU_PY) scripts/gpu_check.py

gpu-wheels: setup  ## wheels of what a bare GPU image lacks (Python 3.12), into .whl/, to carry there (docs/benchmarks.md)
	$(PY) -m pip wheel -q --no-deps -w .whl $$($(PY) -m pip freeze | grep -iE '^(hydra-core|omegaconf|antlr4-python3-runtime)==')

clean:  ## remove outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
