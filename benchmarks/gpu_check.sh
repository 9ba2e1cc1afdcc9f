#!/usr/bin/env bash
# The first run on a GPU machine, as it comes (python3 with PyTorch, numpy, tqdm, pytest; nothing
# installed, no ../shared): tests, bf16+compile vs fp32, tokens/s and MFU, max batch, DDP.
#
#   benchmarks/gpu_check.sh [RESULTS_DIR] [--device cpu --quick]
#
# RESULTS_DIR defaults to $OUT. Writes RESULTS_DIR/gpu_check.{json,md}, section by section, so a
# run cut short by its time limit (7 min 50 s here, under the 8 minutes it is given) keeps what it
# measured. Exit status 0 when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-}"
if [[ $# -gt 0 && $1 != -* ]]; then
    out=$1
    shift
fi
if [[ -z $out ]]; then
    echo "gpu_check.sh: error: give a results folder or set \$OUT" >&2
    exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec timeout --signal=TERM --kill-after=10 470 "${PYTHON:-python3}" benchmarks/gpu_check.py "$out" "$@"
