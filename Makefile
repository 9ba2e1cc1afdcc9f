# Two entry points: `make run` (the default pipeline) and `make test` (the test suite).
# Both create .venv and install what they need on first use, at the versions locked in requirements/
# (`make lock` refreshes the lock).
#
# TORCH_SPEC pins the PyTorch build, installed after the lock. The default, torch==2.13.0 (the torch
# the lock was resolved with), is the CPU wheel cached on the development machines and the CUDA build
# on PyPI for Linux GPU hosts; override it for another build, e.g.
# make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_LOCKED := torch==2.13.0
TORCH_SPEC ?= $(TORCH_LOCKED)
CONFIG ?= config/config.yaml
CORES ?= all
SNAKEMAKE_ARGS ?=
# `make run` shows a progress summary; Snakemake's full output goes to SNAKEMAKE_LOG, by default
# logs/snakemake.log in the config's results folder (results/ for config/config.yaml, results/<name>/
# for config/<name>.yaml; config/README.md). CONFIG may name several files (later ones amend earlier
# ones); it comes last, so that SNAKEMAKE_ARGS may hold targets.
SNAKEMAKE_LOG ?=
PYTEST_ARGS ?=

# The lock: exact versions, with hashes, of every dependency but torch. run-lock.txt holds the
# runtime dependencies, test-lock.txt those and the test extra at the same versions; torch-lock.txt
# holds TORCH_LOCKED's own dependencies (its CUDA build's on Linux too), constraints on the torch install.
RUN_LOCK := requirements/run-lock.txt
TEST_LOCK := requirements/test-lock.txt
TORCH_LOCK := requirements/torch-lock.txt
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
# The lock's torch installs within torch-lock.txt; another TORCH_SPEC brings the dependencies it needs.
ifeq ($(strip $(TORCH_SPEC)),$(TORCH_LOCKED))
TORCH_INSTALL = $(TORCH_SPEC) -c $(TORCH_LOCK)
else
TORCH_INSTALL = $(TORCH_SPEC)
endif
# After an install, pip check names any requirement left unmet or broken.
PIP_CHECK = $(BIN)/pip check || { echo "The installed versions conflict (above): if pyproject.toml changed, \
	refresh the lock (make lock); a TORCH_SPEC other than $(TORCH_LOCKED) may need other versions."; exit 1; }

.PHONY: run test bench lock clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock first (hash-checked; nothing in it needs torch), then torch from TORCH_SPEC (with the
# lock's torch its dependencies are there already; a CUDA build adds its own, at torch-lock.txt's
# versions), then this package without dependencies. setup.py builds the compiled tokenizer parts,
# so editing their sources reinstalls (and rebuilds) them; a refreshed lock reinstalls too.
$(VENV)/.run-deps: $(RUN_LOCK) $(TORCH_LOCK) pyproject.toml setup.py $(wildcard src/tinylm/tokenizer/*.[ch]) | $(BIN)/python
	$(BIN)/pip install -q -r $(RUN_LOCK)
	$(BIN)/pip install -q $(TORCH_INSTALL)
	$(BIN)/pip install -q --no-deps -e .
	$(PIP_CHECK)
	touch $@

# torch again after the test lock: a TORCH_SPEC other than the lock's may need other versions of
# torch's own dependencies than the lock holds (with the lock's torch, nothing to do).
$(VENV)/.test-deps: $(TEST_LOCK) $(VENV)/.run-deps
	$(BIN)/pip install -q -r $(TEST_LOCK)
	$(BIN)/pip install -q $(TORCH_INSTALL)
	$(PIP_CHECK)
	touch $@

# The results folder is the config's: tinylm.pipeline.paths reads it from the same arguments.
run: $(VENV)/.run-deps
	results="$$($(BIN)/python -m tinylm.pipeline.paths $(SNAKEMAKE_ARGS) --configfile $(CONFIG))" && \
	$(BIN)/python -m tinylm.pipeline.quiet --log "$(or $(SNAKEMAKE_LOG),$$results/logs/snakemake.log)" \
		--report "$$results/report/README.md" -- --cores $(CORES) $(SNAKEMAKE_ARGS) --configfile $(CONFIG)

# The linter and the type checker (its settings in pyproject.toml) first: they take seconds, and a
# failing one fails the test command.
test: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmarks' extra (tiktoken, transformers) is part of the test lock.
bench: $(VENV)/.test-deps
	$(BIN)/python benchmarks/bench_tokenizer.py
	$(BIN)/python benchmarks/bench_train.py

# tools/lock.sh writes the three lock files with uv (see there).
lock:
	PYTHON="$(PYTHON)" LOCK_VENV="$(LOCK_VENV)" UV_SPEC="$(UV_SPEC)" LOCK_ARGS="$(LOCK_ARGS)" \
	TORCH_LOCKED="$(TORCH_LOCKED)" TORCH_CUDA_DEPS="$(strip $(TORCH_CUDA_DEPS))" \
	RUN_LOCK="$(RUN_LOCK)" TEST_LOCK="$(TEST_LOCK)" TORCH_LOCK="$(TORCH_LOCK)" tools/lock.sh

clean-venv:
	rm -rf $(VENV) $(LOCK_VENV)
