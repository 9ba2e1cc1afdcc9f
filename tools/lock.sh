#!/usr/bin/env bash
# Writes RUN_LOCK and TEST_LOCK, the exact versions (with hashes) `make run` and `make test` install;
# `make lock` runs it with the Makefile's variables. uv resolves pyproject.toml's dependencies with
# TORCH_LOCKED for every platform and every Python >= 3.11, one version per package (environment
# markers choose per platform): the test lock (runtime dependencies and the test extra) first, then the
# run lock within it, so that both hold the same versions. torch itself is resolved but not written
# (the Makefile installs TORCH_SPEC after the lock), nor are TORCH_CUDA_DEPS and what only they need.
# LOCK_ARGS=--upgrade takes the newest versions; without it the locked ones that still fit stay.
set -euo pipefail
: "$PYTHON" "$LOCK_VENV" "$UV_SPEC" "$TORCH_LOCKED" "$TORCH_CUDA_DEPS" "$RUN_LOCK" "$TEST_LOCK"
LOCK_ARGS=${LOCK_ARGS-}

[ -x "$LOCK_VENV/bin/python" ] || "$PYTHON" -m venv "$LOCK_VENV"
"$LOCK_VENV/bin/pip" install -q "$UV_SPEC"
echo "$TORCH_LOCKED" > "$LOCK_VENV/torch.in"
printf '%s\n' $TORCH_CUDA_DEPS > "$LOCK_VENV/torch-cuda-deps.txt"

compile() {  # compile OUTPUT ARGS...: uv's resolution into OUTPUT, with the header below on top
    local out=$1; shift
    # shellcheck disable=SC2086  # LOCK_ARGS holds options
    "$LOCK_VENV/bin/uv" pip compile pyproject.toml "$LOCK_VENV/torch.in" --universal \
        --fork-strategy fewest --python-version 3.11 --generate-hashes --no-header \
        --no-emit-package torch --excludes "$LOCK_VENV/torch-cuda-deps.txt" $LOCK_ARGS "$@" -o "$out"
}
header() {  # header COMMAND
    cat <<EOF
# Exact versions of tinylm's dependencies that \`$1\` installs (pip install -r $2).
# Made by \`make lock\` ($("$LOCK_VENV/bin/uv" --version): uv pip compile --universal --fork-strategy fewest
# --generate-hashes) on $(uname -sm) with Python $("$LOCK_VENV/bin/python" -c 'import platform; print(platform.python_version())'), from pyproject.toml; do not edit by hand.
# One version per package for every Python >= 3.11; environment markers choose per platform.
# $TORCH_LOCKED is the torch of the resolution (the Makefile's TORCH_SPEC default) but is not installed
# from this file: the Makefile installs TORCH_SPEC after it. Left out with torch: the dependencies
# only its CUDA build has ($TORCH_CUDA_DEPS) and what only they need.
EOF
}

compile "$TEST_LOCK" --extra test
compile "$RUN_LOCK" -c "$TEST_LOCK"
for pair in "make run:$RUN_LOCK" "make test:$TEST_LOCK"; do
    lock=${pair#*:}
    { header "${pair%%:*}" "$lock"; cat "$lock"; } > "$lock.tmp"
    mv "$lock.tmp" "$lock"
done
