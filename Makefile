# Every target installs what it needs first (a virtual environment in .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo pipeline lint bench parity clean

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

PIPE := outputs/pipeline
WSS := $(or $(DHR_DATA),data)/WSS/SYNTH
pipeline: setup  ## the whole WSSS pipeline on the synthetic set: CAM seeds, CAUSE, DHR masks, segmentation (CPU: ~1.5 h)
	$(PY) -m dhr.train model=cam hydra.run.dir=$(PIPE)/1_cam
	$(PY) -m dhr.predict model=cam ckpt=$(PIPE)/1_cam/checkpoints/last.ckpt split=train overwrite=true hydra.run.dir=$(PIPE)/2_seeds
	$(PY) -m dhr.train experiment=synthetic_cause hydra.run.dir=$(PIPE)/3_cause
	$(PY) -m dhr.features ckpt=$(PIPE)/3_cause/checkpoints/head/last.ckpt split=train overwrite=true hydra.run.dir=$(PIPE)/4_features
	$(PY) -m dhr.train experiment=synthetic_dhr hydra.run.dir=$(PIPE)/5_dhr
	$(PY) -m dhr.predict model=dhr ckpt=$(PIPE)/5_dhr/checkpoints/last.ckpt split=train overwrite=true hydra.run.dir=$(PIPE)/6_dhr_masks
	$(PY) -m dhr.train wss=folder wss.path=$(WSS)/DHR/train hydra.run.dir=$(PIPE)/7_segmentation

lint: setup  ## ruff
	$(PY) -m ruff check dhr tests scripts

bench: setup  ## benchmarks: evaluator vs the release's loop, relabelling vs the literal reference
	$(PY) scripts/bench/evaluate.py
	$(PY) scripts/bench/relabel.py

parity: setup  ## batched relabelling vs the literal reference of the release, 512 crops with the CRF (~3 min)
	$(PY) scripts/relabel_parity.py --samples 20

clean:  ## remove outputs and caches (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
