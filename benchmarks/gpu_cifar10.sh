#!/usr/bin/env bash
# The GPU recipe (issue 8) on one NVIDIA GPU:
#   1. benchmarks/gpu_cifar10.py: SimCLR ResNet-18 (CIFAR stem, full width) on CIFAR-10, batch 512,
#      bf16 + channels_last + torch.compile, augmentation on the GPU, for a fixed number of epochs;
#      epoch time, img/s, peak memory, kNN@200; tuned step vs fp32 eager vs the bare backbone;
#   2. benchmarks/gpu_smoke.py: every registered method for a few steps in bf16, fp16 (GradScaler,
#      stop + resume) and with torch.compile, then `selfsup eval knn`; a PASS/FAIL table.
#
#   SELFSUP_DATA=/path/to/datasets bash benchmarks/gpu_cifar10.sh
#
# SELFSUP_DATA holds cifar10/train.npz and cifar10/test.npz (or torchvision's CIFAR-10 files).
# Optional: BENCH_ARGS="--epochs 30" (gpu_cifar10.py options), SMOKE_ARGS="--steps 20"
# (gpu_smoke.py options; default "--compile-methods simclr supervised mae"), RESULTS=dir for
# the JSON files (default benchmarks/results), TOTAL_BUDGET_S=seconds to give the smoke test
# only what is left of that budget, PYTHON. On an H100 the whole script takes about 9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${SELFSUP_DATA:?set SELFSUP_DATA to the folder that holds cifar10/}"
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/results}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")' || exit 1
start=$(date +%s)

# shellcheck disable=SC2086  # BENCH_ARGS / SMOKE_ARGS are word lists
"$PY" benchmarks/gpu_cifar10.py --json "$RESULTS/gpu_cifar10.json" ${BENCH_ARGS:-}
bench=$?

# compile is slow to start (40-60 s per method on an H100): by default only these three
smoke_args=${SMOKE_ARGS:---compile-methods simclr supervised mae}
if [ -n "${TOTAL_BUDGET_S:-}" ]; then
  smoke_args="$smoke_args --budget-s $((TOTAL_BUDGET_S - ($(date +%s) - start)))"
fi
# shellcheck disable=SC2086
"$PY" benchmarks/gpu_smoke.py --json "$RESULTS/gpu_smoke.json" $smoke_args
smoke=$?

echo "gpu_cifar10.py exit $bench, gpu_smoke.py exit $smoke"
[ "$bench" -eq 0 ] && [ "$smoke" -eq 0 ]
