# Two entry points: `make run` (the default pipeline) and `make test` (the test suite).
# Both create .venv and install what they need on first use.
#
# TORCH_SPEC pins the PyTorch build installed first. The default, torch==2.13.0, is the CPU wheel
# cached on the development machines and the CUDA build on PyPI for Linux GPU hosts; override it
# for another build, e.g. make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= config/config.yaml
CORES ?= all
SNAKEMAKE_ARGS ?=
# `make run` shows a progress summary; Snakemake's full output goes here. CONFIG may name several
# files (later ones amend earlier ones); it comes last, so that SNAKEMAKE_ARGS may hold targets.
SNAKEMAKE_LOG ?= results/logs/snakemake.log
PYTEST_ARGS ?=

BIN := $(VENV)/bin

.PHONY: run test bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# setup.py builds the compiled tokenizer parts, so editing their sources reinstalls (and rebuilds) them.
$(VENV)/.run-deps: pyproject.toml setup.py $(wildcard src/tinylm/tokenizer/*.[ch]) | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: $(VENV)/.run-deps
	$(BIN)/pip install -q -e ".[test]"
	touch $@

$(VENV)/.bench-deps: $(VENV)/.run-deps
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

run: $(VENV)/.run-deps
	$(BIN)/python -m tinylm.quiet --log $(SNAKEMAKE_LOG) --report results/report/README.md -- \
		--cores $(CORES) $(SNAKEMAKE_ARGS) --configfile $(CONFIG)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.bench-deps
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_train.py

clean-venv:
	rm -rf $(VENV)
