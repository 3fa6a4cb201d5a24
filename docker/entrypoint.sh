#!/bin/sh
# fdkd container entrypoint: on a GPU with TensorRT, build the engine on first start into a volume
# keyed by GPU and TensorRT version (timing cache kept beside it), then serve; elsewhere serve ONNX.
set -eu

RUN_DIR="${FDKD_RUN_DIR:-/srv/run}"
ENGINE_ROOT="${FDKD_ENGINE_ROOT:-/srv/engines}"
PRECISION="${FDKD_PRECISION:-fp16}"
PORT="${FDKD_SERVE_PORT:-8000}"

key=$(python3 -c "from serving.runtime.cuda_env import gpu_info, gpu_slug, tensorrt_version as v
i = gpu_info()
print(f'{gpu_slug(i)}-trt{v()}' if i and v() else '')" 2>/dev/null || true)

if [ -n "$key" ]; then
  ENGINE_DIR="$ENGINE_ROOT/$key"
  mkdir -p "$ENGINE_DIR"
  if ! ls "$ENGINE_DIR"/*.plan >/dev/null 2>&1; then
    echo "first start on $key: building the $PRECISION engine into $ENGINE_DIR" >&2
    fdkd engine "$RUN_DIR" --out "$ENGINE_DIR" --precision "$PRECISION"
  fi
  exec fdkd serve "$RUN_DIR" --host 0.0.0.0 --port "$PORT" --engine-dir "$ENGINE_DIR"
fi
echo "no GPU with TensorRT: serving the ONNX artifact with ONNX Runtime on the CPU" >&2
exec fdkd serve "$RUN_DIR" --host 0.0.0.0 --port "$PORT"
