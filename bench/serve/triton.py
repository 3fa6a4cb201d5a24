"""Triton Inference Server (the ``tritonserver`` binary of ``nvidia-pytriton``) serving a run's student.onnx.

Run by ``bench/serve/load.py`` with the interpreter of the Triton virtualenv (made from the
system's Debian python3.11: PyTriton's Python-backend stub links that libpython)::

    .bench-venv-triton/bin/python -m bench.serve.triton runs/avdigits --http-port 8011 --delay-us 0

Triton's C++ HTTP frontend and dynamic batcher call a Python function that runs the same ONNX
Runtime session settings as ``fdkd serve`` (``fdkd.serving.runtime.onnx``: default options, intra-op
threads = ``--threads``, CPU provider). Prints ``ready`` once the model answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--delay-us", type=int, default=0, help="dynamic batcher max_queue_delay_microseconds")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (0: its default)")
    ap.add_argument("--max-batch", type=int, default=64)
    args = ap.parse_args()

    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    io = manifest["artifacts"]["student.onnx"]["onnx"]
    opts = ort.SessionOptions()  # what fdkd.serving.runtime.onnx.OnnxRuntime sets
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(args.run_dir / "student.onnx"), sess_options=opts,
                                   providers=["CPUExecutionProvider"])
    in_name, out_name = io["inputs"][0]["name"], io["outputs"][0]["name"]
    shape = tuple(int(d) for d in io["inputs"][0]["shape"][1:])

    @batch
    def infer(**inputs):
        x = np.ascontiguousarray(inputs[in_name], dtype=np.float32)
        return {out_name: session.run([out_name], {in_name: x})[0]}

    config = TritonConfig(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                          http_address="127.0.0.1", grpc_address="127.0.0.1", log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name=manifest.get("name", "student"), infer_func=infer,
                    inputs=[Tensor(name=in_name, dtype=np.float32, shape=shape)],
                    outputs=[Tensor(name=out_name, dtype=np.float32, shape=(len(manifest["class_names"]),))],
                    config=ModelConfig(max_batch_size=args.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us)),
                    strict=False)
        print("ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
