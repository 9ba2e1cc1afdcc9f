# Two entry points: `make run` (the default pipeline) and `make test` (the test suite).
# Both create .venv and install what they need on first use.
#
# TORCH_SPEC pins the PyTorch build installed first. The default, torch==2.13.0, is the CPU wheel
# cached on the development machines and the CUDA build on PyPI for Linux GPU hosts; override it
# for another build, e.g. make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_LOCKED := torch==2.13.0
TORCH_SPEC ?= $(TORCH_LOCKED)
CONFIG ?= config/config.yaml
CORES ?= all
SNAKEMAKE_ARGS ?=
# `make run` shows a progress summary; Snakemake's full output goes here. CONFIG may name several
# files (later ones amend earlier ones); it comes last, so that SNAKEMAKE_ARGS may hold targets.
SNAKEMAKE_LOG ?= results/logs/snakemake.log
PYTEST_ARGS ?=

# The lock: exact versions, with hashes, of every dependency but torch. run-lock.txt holds the
# runtime dependencies, test-lock.txt those and the test extra at the same versions.
RUN_LOCK := requirements/run-lock.txt
TEST_LOCK := requirements/test-lock.txt
# `make lock` resolves with uv (installed in LOCK_VENV) to the newest versions pyproject.toml allows;
# `make lock LOCK_ARGS=` keeps the locked versions that still fit (after adding a dependency, say).
UV_SPEC ?= uv==0.13.9
LOCK_VENV ?= .venv-lock
LOCK_ARGS ?= --upgrade
# The dependencies of PyPI's torch that only its CUDA build has (on Linux): TORCH_SPEC brings them on
# GPU hosts, and the lock leaves them out, with what only they need, so that it installs no CUDA library.
TORCH_CUDA_DEPS := cuda-bindings cuda-toolkit nvidia-cudnn-cu13 nvidia-cusparselt-cu13 nvidia-nccl-cu13 \
	nvidia-nvshmem-cu13 triton

BIN := $(VENV)/bin

.PHONY: run test bench lock clean-venv

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

# tools/lock.sh writes both lock files with uv (see there).
lock:
	PYTHON="$(PYTHON)" LOCK_VENV="$(LOCK_VENV)" UV_SPEC="$(UV_SPEC)" LOCK_ARGS="$(LOCK_ARGS)" \
	TORCH_LOCKED="$(TORCH_LOCKED)" TORCH_CUDA_DEPS="$(strip $(TORCH_CUDA_DEPS))" \
	RUN_LOCK="$(RUN_LOCK)" TEST_LOCK="$(TEST_LOCK)" tools/lock.sh

clean-venv:
	rm -rf $(VENV) $(LOCK_VENV)
