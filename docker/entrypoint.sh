#!/bin/sh
# fdkd container entrypoint: on a GPU with TensorRT, build the engine on first start into a volume
# keyed by GPU (Jetson module) and TensorRT version (timing cache kept beside it), then serve it.
# An image without TensorRT serves ONNX on the CPU. An image WITH TensorRT whose CUDA does not
# work (no --gpus / --runtime nvidia, a driver older than the image's CUDA, a user outside the
# video group on a Jetson) logs why and exits non-zero, unless FDKD_ALLOW_CPU_FALLBACK=1 asks for
# the CPU explicitly. The probe is `python3 -m serving.runtime.cuda_env` (exit 0: engine key on
# stdout; 10: no TensorRT; 11: GPU failure, CPU fallback allowed; anything else: GPU failure).
set -eu

RUN_DIR="${FDKD_RUN_DIR:-/srv/run}"
ENGINE_ROOT="${FDKD_ENGINE_ROOT:-/srv/engines}"
PRECISION="${FDKD_PRECISION:-fp16}"
PORT="${FDKD_SERVE_PORT:-8000}"

# the probe's log (stderr) goes straight to the container log; only its exit code is branched on
status=0
key=$(python3 -m serving.runtime.cuda_env) || status=$?

case "$status" in
  0)
    ENGINE_DIR="$ENGINE_ROOT/$key"
    mkdir -p "$ENGINE_DIR"
    if ! ls "$ENGINE_DIR"/*.plan >/dev/null 2>&1; then
      echo "fdkd: first start on $key: building the $PRECISION engine into $ENGINE_DIR" >&2
      fdkd engine "$RUN_DIR" --out "$ENGINE_DIR" --precision "$PRECISION"
    fi
    exec fdkd serve "$RUN_DIR" --host 0.0.0.0 --port "$PORT" --engine-dir "$ENGINE_DIR"
    ;;
  10|11)
    exec fdkd serve "$RUN_DIR" --host 0.0.0.0 --port "$PORT"
    ;;
  *)
    echo "fdkd: GPU start failed (probe exit $status); not serving" >&2
    exit "$status"
    ;;
esac
