#!/usr/bin/env bash
# One prepared GPU check, in one go, on a machine with an NVIDIA GPU and no network:
#   1. environment: Python, torch and its CUDA, the GPU (nvidia-smi), CPU model and flags, what is missing;
#   2. fdkd's ctypes CUDA runtime (serving/runtime/cudart.py, numpy only): device query + memory round trip;
#   3. TensorRT, where it is installed: the `gpu`-marked tests (engine build + parity with ONNX Runtime);
#   4. distillation of `none` and `fd` on CUDA and on the CPU: one table of samples/s, peak GPU
#      memory, test accuracy, wall time.
# Each step runs even if an earlier one failed; the raw records go to $OUT/gpu_check.json (the
# device tool brings $OUT back; elsewhere runs/gpu-check/), and the table is printed with them.
# `python3 bench/gpu_check.py --render FILE` prints the table again from committed records.
#
#   bash bench/gpu_check.sh                 # on the GPU machine (CPU rows too, for scale; ~6 min on an H100)
#   bash bench/gpu_check.sh --dry-run       # anywhere: 2 epochs on a small subset, CPU only if no GPU
#   bash bench/gpu_check.sh --prepare-wheels 3.12   # HERE, with network: offline wheels for a device
#                                           # whose Python is 3.12 into bench/wheelhouse/ (carry it)
# Missing Python packages (pydantic, typer, scipy, scikit-learn, espeakng-loader, ...) are installed
# offline from $GPU_CHECK_WHEELS (default bench/wheelhouse/) when that folder exists; torch and numpy
# must come with the machine.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
NEEDED=(pydantic pyyaml typer rich scipy scikit-learn espeakng-loader)
WHEELS="${GPU_CHECK_WHEELS:-bench/wheelhouse}"

if [ "${1:-}" = "--prepare-wheels" ]; then
  pyver="${2:?--prepare-wheels needs the device Python version, e.g. 3.12}"
  "$PY" -m pip download -q -d "$WHEELS" --only-binary=:all: --python-version "$pyver" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    "${NEEDED[@]}" || exit 1
  rm -f "$WHEELS"/numpy-*.whl  # the device's torch brings its own
  du -sh "$WHEELS"
  echo "carry $WHEELS to the device (run tool: carry=[\"$WHEELS\"]); it is git-ignored"
  exit 0
fi

EPOCHS=20
EXTRA=()
if [ "${1:-}" = "--dry-run" ]; then
  EPOCHS=2
  EXTRA=(--set data.avdigits.max_images=300 --set teacher.optim.epochs=2)
fi
OUT_DIR="${OUT:-runs/gpu-check}"
mkdir -p "$OUT_DIR"
export FDKD_QUIET=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$PY" - <<'EOF'
import importlib.util
mods = {"pydantic": "pydantic", "yaml": "pyyaml", "typer": "typer", "rich": "rich", "scipy": "scipy",
        "sklearn": "scikit-learn", "espeakng_loader": "espeakng-loader"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ -d "$WHEELS" ]; then
    echo "installing offline from $WHEELS: $missing"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" $missing || echo "offline install failed: $missing"
  else
    echo "missing Python packages: $missing (no $WHEELS; see --prepare-wheels); the distillation step will say so"
  fi
fi

"$PY" bench/gpu_check.py --epochs "$EPOCHS" --out "$OUT_DIR" "${EXTRA[@]}"
status=$?

if "$PY" -c "import tensorrt" 2>/dev/null && "$PY" -c "import pytest" 2>/dev/null; then
  echo; echo "## TensorRT: gpu-marked tests"
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_tensorrt.py tests/test_cudart.py 2>&1 \
    | tee "$OUT_DIR/tensorrt-tests.txt" | tail -15
  tests_rc=${PIPESTATUS[0]}
  echo "TensorRT gpu tests exit code: $tests_rc"
  [ "$tests_rc" -eq 0 ] || status=1
else
  echo; echo "TensorRT or pytest is not installed here: engine tests skipped (the ctypes CUDA check above still ran)"
fi
echo; echo "records: $OUT_DIR/gpu_check.json  (python3 bench/gpu_check.py --render FILE prints the tables again)"
exit "$status"
