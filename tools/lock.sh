#!/usr/bin/env bash
# Writes the lock that `make run` and `make test` install from; `make lock` runs it with the
# Makefile's variables. uv resolves pyproject.toml's dependencies with TORCH_LOCKED for every
# platform and every Python >= 3.11, one version per package (environment markers choose per platform):
#   TEST_LOCK: the runtime dependencies and the test extra, with hashes;
#   RUN_LOCK: the runtime dependencies, within TEST_LOCK (the same versions), with hashes;
#   TORCH_LOCK: TORCH_LOCKED and its own dependencies, within TEST_LOCK, without hashes (a cached
#     or other-index build of the same version keeps its own file): constraints on the torch install.
# RUN_LOCK and TEST_LOCK hold neither torch (the Makefile installs TORCH_SPEC after them) nor
# TORCH_CUDA_DEPS and what only they need, so that they install no CUDA library.
# LOCK_ARGS=--upgrade takes the newest versions; without it the locked ones that still fit stay.
set -euo pipefail
: "$PYTHON" "$LOCK_VENV" "$UV_SPEC" "$TORCH_LOCKED" "$TORCH_CUDA_DEPS" "$RUN_LOCK" "$TEST_LOCK" "$TORCH_LOCK"
LOCK_ARGS=${LOCK_ARGS-}

[ -x "$LOCK_VENV/bin/python" ] || "$PYTHON" -m venv "$LOCK_VENV"
"$LOCK_VENV/bin/pip" install -q "$UV_SPEC"
echo "$TORCH_LOCKED" > "$LOCK_VENV/torch.in"
printf '%s\n' $TORCH_CUDA_DEPS > "$LOCK_VENV/torch-cuda-deps.txt"

compile() {  # compile OUTPUT ARGS...: uv's resolution of ARGS (sources and options) into OUTPUT
    local out=$1; shift
    # shellcheck disable=SC2086  # LOCK_ARGS holds options
    "$LOCK_VENV/bin/uv" pip compile "$LOCK_VENV/torch.in" --universal --fork-strategy fewest \
        --python-version 3.11 --no-header $LOCK_ARGS "$@" -o "$out"
}
made() {  # made SOURCE: the header's lines on how and where the lock was made
    cat <<EOF
# Made by \`make lock\` ($("$LOCK_VENV/bin/uv" --version): uv pip compile --universal --fork-strategy fewest)
# on $(uname -sm) with Python $("$LOCK_VENV/bin/python" -c 'import platform; print(platform.python_version())'), from $1; do not edit by hand.
# One version per package for every Python >= 3.11; environment markers choose per platform.
EOF
}
prepend() {  # prepend FILE: standard input on top of FILE
    cat - "$1" > "$1.tmp"
    mv "$1.tmp" "$1"
}

locked=(pyproject.toml --generate-hashes --no-emit-package torch --excludes "$LOCK_VENV/torch-cuda-deps.txt")
compile "$TEST_LOCK" "${locked[@]}" --extra test
compile "$RUN_LOCK" "${locked[@]}" -c "$TEST_LOCK"
compile "$TORCH_LOCK" -c "$TEST_LOCK"
for pair in "make run:$RUN_LOCK" "make test:$TEST_LOCK"; do
    lock=${pair#*:}
    prepend "$lock" <<EOF
# Exact versions, with hashes, of tinylm's dependencies that \`${pair%%:*}\` installs (pip install -r $lock).
$(made pyproject.toml)
# $TORCH_LOCKED is the torch of the resolution (the Makefile's TORCH_SPEC default) but is not installed
# from this file: the Makefile installs TORCH_SPEC after it (within $TORCH_LOCK when it is the default).
# Left out with torch: the dependencies only its CUDA build has ($TORCH_CUDA_DEPS)
# and what only they need.
EOF
done
prepend "$TORCH_LOCK" <<EOF
# Exact versions of $TORCH_LOCKED and its dependencies, CUDA build's included, the versions of
# $TEST_LOCK where they meet: constraints on the Makefile's torch install (pip install TORCH_SPEC -c
# $TORCH_LOCK) when TORCH_SPEC is $TORCH_LOCKED, installing nothing by themselves. A CPU build needs no
# CUDA package, so those constraints bind where PyPI's CUDA build is installed (Linux GPU hosts).
$(made "the Makefile's TORCH_LOCKED")
EOF
