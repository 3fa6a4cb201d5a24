#!/usr/bin/env bash
# One prepared GPU check, in one go, on a machine with an NVIDIA GPU and no network:
#   1. environment: Python, torch and its CUDA, the GPU (nvidia-smi), CPU model and flags, what is missing;
#   2. fdkd's ctypes CUDA runtime (serving/runtime/cudart.py, numpy only): device query + memory round trip;
#   3. distillation of `none` and `fd` on CUDA and on the CPU: one table of samples/s, peak GPU
#      memory, test accuracy, wall time;
#   4. with --science SECONDS: the science table v2 (bench/science/v2.py) on this machine until SECONDS
#      after the script started, every row and both budgets (--full), one process per preset, in parallel; on CUDA where
#      step 3 trained there, else on this machine's CPUs. Records (each names its device and CPU) go
#      to $OUT/science-<preset>.jsonl as runs land; a run unfinished at the deadline is not recorded,
#      and bench/science/v2.py run later with the merged records picks up where this one stopped;
#   5. TensorRT, where it is installed: the `gpu`-marked tests (engine build + parity with ONNX Runtime).
# Each step runs even if an earlier one failed; the raw records go to $OUT/gpu_check.json (the
# device tool brings $OUT back; elsewhere runs/gpu-check/), and the table is printed with them.
# `python3 -m bench.gpu.check --render FILE` prints the table again from committed records.
#
#   bash bench/gpu/check.sh                 # on the GPU machine (CPU rows too, for scale)
#   bash bench/gpu/check.sh --science 560   # the same, then the science bench; all done in ~560 s
#   bash bench/gpu/check.sh --dry-run       # anywhere: 2 epochs on a small subset, CPU only if no GPU
#   bash bench/gpu/check.sh --prepare-wheels 3.12   # HERE, with network: offline wheels for a device
#                                           # whose Python is 3.12 into bench/wheelhouse/ (carry it)
# Missing Python packages are installed offline from $GPU_CHECK_WHEELS (default bench/wheelhouse/),
# without resolving dependencies (--no-deps, into /tmp/fdkd-site): torch, numpy, scipy, scikit-learn,
# pyyaml, typer and rich must come with the machine (the workplace's H200 image has them; it lacks
# pydantic, espeakng-loader and mlxtend, which the wheelhouse brings).
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$SECONDS
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-bench/wheelhouse}"

if [ "${1:-}" = "--prepare-wheels" ]; then
  pyver="${2:?--prepare-wheels needs the device Python version, e.g. 3.12}"
  plat=(--only-binary=:all: --python-version "$pyver" --implementation cp --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)
  # pydantic with its pinned pydantic-core and the rest of its small closure, espeakng-loader; mlxtend
  # alone (its own requirements, pandas, scikit-learn and so on, come with the machine)
  "$PY" -m pip download -q -d "$WHEELS" "${plat[@]}" pydantic espeakng-loader || exit 1
  "$PY" -m pip download -q -d "$WHEELS" "${plat[@]}" --no-deps 'mlxtend>=0.23' || exit 1
  du -sh "$WHEELS"
  echo "carry $WHEELS to the device (run tool: carry=[\"$WHEELS\"]); it is git-ignored"
  exit 0
fi

EPOCHS=20
EXTRA=()
SCIENCE_S=0
case "${1:-}" in
  --dry-run) EPOCHS=2; EXTRA=(--set data.avdigits.max_images=300 --set teacher.optim.epochs=2) ;;
  --science) SCIENCE_S="${2:?--science needs a number of seconds}" ;;
  "") ;;
  *) echo "unknown option $1 (see the header of $0)"; exit 2 ;;
esac
OUT_DIR="${OUT:-runs/gpu-check}"
mkdir -p "$OUT_DIR"
export FDKD_QUIET=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$PY" - <<'EOF'
import importlib.util
mods = {"pydantic": "pydantic", "yaml": "pyyaml", "typer": "typer", "rich": "rich", "scipy": "scipy",
        "sklearn": "scikit-learn", "espeakng_loader": "espeakng-loader", "mlxtend": "mlxtend"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "missing: $missing; installing $WHEELS/*.whl offline into /tmp/fdkd-site"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fdkd-site "$WHEELS"/*.whl; then
      export PYTHONPATH="/tmp/fdkd-site:$PYTHONPATH"
    else
      echo "offline install failed"
    fi
  else
    echo "missing Python packages: $missing (no wheels in $WHEELS; see --prepare-wheels); the steps that need them will say so"
  fi
fi

check_s=300; [ "$SCIENCE_S" -gt 0 ] && check_s=150  # leave the science bench its time
timeout -k 10 "$check_s" "$PY" -m bench.gpu.check --epochs "$EPOCHS" --out "$OUT_DIR" "${EXTRA[@]}"
status=$?

if [ "$SCIENCE_S" -gt 0 ]; then
  left=$(( SCIENCE_S - (SECONDS - T0) - 15 )); [ "$left" -ge 30 ] || left=30
  echo; echo "## science table v2 on this machine, for $left s"
  # CUDA only where step 3 trained there; otherwise this machine's CPUs (one thread per run)
  device=$("$PY" - "$OUT_DIR/gpu_check.json" <<'EOF' 2>/dev/null || echo cpu
import json, sys
rows = json.load(open(sys.argv[1]))["steps"].get("distill", {}).get("rows") or []
print("cuda" if any(r["device"] == "cuda" for r in rows) else "cpu")
EOF
)
  presets=(avdigits "avblend:shared=0" "avblend:shared=0.5" avmnist)
  jobs=$(( $(nproc) / ${#presets[@]} )); [ "$jobs" -ge 1 ] || jobs=1
  echo "device $device; ${#presets[@]} presets at once, $jobs runs each; log: $OUT_DIR/science.log"
  pids=()
  for p in "${presets[@]}"; do
    t=$(echo "$p" | sed 's/[:=]/_/g; s/[.]/p/g')  # a name the device tool copies back
    timeout -k 5 "$left" "$PY" -m bench.science.v2 --presets "$p" --jobs "$jobs" --full \
      --set "accel.device=$device" --records "$OUT_DIR/science-$t.jsonl" \
      --out /tmp/fdkd-science --data-cache "/tmp/fdkd-science/data-$t" >>"$OUT_DIR/science.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  pkill -f "multiprocessing.spawn" 2>/dev/null  # pool workers a timed-out parent left (a pattern naming the
  # script would also match the shell that launched this one)
  grep -h -m 1 "^CPU:" "$OUT_DIR/science.log"
  for f in "$OUT_DIR"/science-*.jsonl; do [ -f "$f" ] && echo "$(wc -l <"$f") records: $f"; done
  echo "failed runs: $(grep -c '^FAILED' "$OUT_DIR/science.log")"
  grep -m 3 -A 2 '^FAILED' "$OUT_DIR/science.log"
fi

# What the TensorRT step needs on a lent GPU, and why it has not run there (2026-12-06):
# - The device image ('cuda': Python 3.12, torch 2.11.0+cu130, CUDA 13, driver 580, onnxruntime 1.30, pytest)
#   has no TensorRT, and nothing can be fetched there: the wheels must be carried in. They are the bindings and
#   the libraries of one TensorRT built for CUDA 13, cp312 manylinux x86_64, fetched HERE with network, e.g.
#     pip download -d bench/wheelhouse --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 tensorrt-cu13 tensorrt-cu13-bindings tensorrt-cu13-libs
#   (pin a 10.x built for CUDA 13 to test what JetPack's 10.3 API does, or an 11.x for 11; the package list
#   this workplace keeps, /work/.library/env/packages/pypi.tsv, names 11.4.0.106 as the newest), and installed
#   there with `pip install --no-deps --target /tmp/fdkd-site` like the other wheels above.
# - tensorrt-cu13-libs holds libnvinfer, its builder resources and the ONNX parser: far larger than the 64 MiB
#   the device tool carries in all (working tree + carried paths; not measured here, but libnvinfer alone is
#   hundreds of MiB). So under today's limits the engine tests cannot run on a lent GPU at all: they need an
#   image with TensorRT, or a larger carry. Until then the TensorRT code is tested on the CPU only, against
#   tests/trt_fakes.py, whose every call is checked against the real 10.3 / 11.0 binding signatures
#   (TRT_SIGNATURES there).
# - With TensorRT there, the gpu-marked tests build FP32, FP16 and INT8 (explicit Q/DQ, strongly typed network:
#   TensorRT 11 has no FP16/INT8 builder flags and no implicit INT8 calibration, and fdkd sets neither in 10)
#   engines from the session's tiny run and compare them with ONNX Runtime; they also need the pipeline's
#   packages the wheelhouse brings (pydantic, espeakng-loader, mlxtend) to train that run first.
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
echo; echo "$(( SECONDS - T0 )) s in all; records: $OUT_DIR/gpu_check.json  (python3 -m bench.gpu.check --render FILE prints the tables again)"
exit "$status"
