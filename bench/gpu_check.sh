#!/usr/bin/env bash
# One prepared GPU check (an H100 for ~10 minutes: PyTorch with CUDA, no TensorRT, no network).
# Builds the built-in data, distills with `none` and `fd` on CUDA and on the CPU, and prints one
# table: samples/s, peak GPU memory, test accuracy, device.
#
#   bash bench/gpu_check.sh              # on the GPU machine (CPU rows too, for scale)
#   bash bench/gpu_check.sh --dry-run    # anywhere: 2 epochs on a small subset, CPU only if no GPU
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=20
EXTRA=()
if [ "${1:-}" = "--dry-run" ]; then
  EPOCHS=2
  EXTRA=(--set data.avdigits.max_images=300 --set teacher.optim.epochs=2)
fi
# The device image has PyTorch; install only what is missing, from this tree, without network if need be.
python3 -c "import pipeline" 2>/dev/null || python3 -m pip install -q --no-deps -e . || true
export FDKD_QUIET=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 bench/gpu_check.py --epochs "$EPOCHS" "${EXTRA[@]}"
