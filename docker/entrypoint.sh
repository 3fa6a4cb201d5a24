#!/bin/sh
# fdkd container entrypoint: on a GPU with TensorRT, build the engine on first start into a volume
# keyed by GPU (Jetson module) and TensorRT version, then by the run's ONNX sha256 and FDKD_PRECISION
# (timing cache kept beside it; `python3 -m fdkd.serving.engine_volume` decides reuse or rebuild), then serve it.
# An image without TensorRT serves ONNX on the CPU. An image WITH TensorRT whose CUDA does not
# work (no --gpus / --runtime nvidia, a driver older than the image's CUDA, a user outside the
# video group on a Jetson) logs why and exits non-zero, unless FDKD_ALLOW_CPU_FALLBACK=1 asks for
# the CPU explicitly. The probe is `python3 -m fdkd.serving.runtime.cuda_env` (exit 0: engine key on
# stdout; 10: no TensorRT; 11: GPU failure, CPU fallback allowed; anything else: GPU failure).
# The server listens on every interface (0.0.0.0), so it needs FDKD_SERVE_API_KEY, or the opt-out by name
# FDKD_SERVE_INSECURE_NO_API_KEY=1: `python3 -m fdkd.serving.settings` checks that first (exit 2, before any engine
# build), with the rule `fdkd serve` itself applies (fdkd.serving.settings).
set -eu

RUN_DIR="${FDKD_RUN_DIR:-/srv/run}"
ENGINE_ROOT="${FDKD_ENGINE_ROOT:-/srv/engines}"
PRECISION="${FDKD_PRECISION:-fp16}"
PORT="${FDKD_SERVE_PORT:-8000}"

python3 -m fdkd.serving.settings --host 0.0.0.0 || exit 2

# the probe's log (stderr) goes straight to the container log; only its exit code is branched on
status=0
key=$(python3 -m fdkd.serving.runtime.cuda_env) || status=$?

case "$status" in
  0)
    # reuse or build: fdkd.serving.engine_volume decides (folder keyed by the run's ONNX sha256 and the precision;
    # only a plan whose gate passed is reused) and prints "reuse DIR" or "build DIR"
    decision=$(python3 -m fdkd.serving.engine_volume "$RUN_DIR" "$ENGINE_ROOT/$key" --precision "$PRECISION")
    action=${decision%% *}
    ENGINE_DIR=${decision#* }
    if [ "$action" = build ]; then
      echo "fdkd: building the $PRECISION engine on $key into $ENGINE_DIR" >&2
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
