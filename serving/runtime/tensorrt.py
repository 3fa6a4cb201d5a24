"""TensorRT engine execution (TensorRT 10 and 11 API), buffers and streams through cuda-python.

One execution context per runtime object; contexts are not thread-safe, so a server creates one
runtime per worker thread (the engine is deserialized from the same file). Inputs go through
``set_input_shape`` + ``set_tensor_address`` and ``execute_async_v3`` on a non-default stream.
The engine's ``build.json`` sidecar must match this GPU and TensorRT version, or loading refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.runtime.cuda_env import check, cudart, gpu_info, tensorrt_version


class EngineMismatch(RuntimeError):
    """The engine was built for another GPU or TensorRT version."""


def build_info_path(plan: Path) -> Path:
    return plan.with_name(plan.stem + ".build.json")


class TensorRTRuntime:
    kind = "tensorrt"

    def __init__(self, path: Path, **_ignored) -> None:
        self.path = Path(path)
        info_path = build_info_path(self.path)
        if not info_path.exists():
            raise EngineMismatch(f"{self.path.name} has no sidecar {info_path.name}; rebuild it with `fdkd build`")
        info = json.loads(info_path.read_text())
        if info.get("tensorrt") != tensorrt_version():
            raise EngineMismatch(f"{self.path.name} was built with TensorRT {info.get('tensorrt')}, "
                                 f"this machine has TensorRT {tensorrt_version() or 'not installed'}")
        gpu = gpu_info()
        if gpu is None:
            raise RuntimeError("no CUDA GPU visible: a TensorRT engine cannot run here")
        built_for = info.get("gpu", {})
        if (built_for.get("name"), built_for.get("compute_capability")) != (gpu["name"], gpu["compute_capability"]):
            raise EngineMismatch(f"{self.path.name} was built for {built_for.get('name')} "
                                 f"(sm {built_for.get('compute_capability')}), this is {gpu['name']} "
                                 f"(sm {gpu['compute_capability']})")
        import tensorrt as trt

        self.info = info
        self.rt = cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise RuntimeError(f"{self.path.name} has {len(inputs)} inputs; fdkd engines have one")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        self.max_batch = int(info["profile"]["max"])
        self.stream = check(self.rt.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                check(self.rt.cudaFree(ptr))
            ptr = check(self.rt.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) > self.max_batch:
            return np.concatenate([self(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        rt = self.rt
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        d_in = self._device(self.input_name, x.nbytes)
        check(rt.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_tensor_address(self.input_name, d_in)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, np.float32)
            outputs[name] = out
            self.context.set_tensor_address(name, self._device(name, out.nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        for name, out in outputs.items():
            check(rt.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        check(rt.cudaStreamSynchronize(self.stream))
        return outputs[self.output_names[0]]

    def mode(self) -> dict:
        """The execution mode validation records and the server must match (TensorRT fuses Q/DQ)."""
        gpu = self.info.get("gpu", {})
        return {"runtime": self.kind, "tensorrt": self.info.get("tensorrt"), "gpu": gpu.get("name"),
                "compute_capability": gpu.get("compute_capability"),
                "qdq": "fused" if self.info.get("precision") == "int8" else None}

    def describe(self) -> dict:
        return {"runtime": self.kind, "mode": self.mode(), "engine": self.path.name, "input": self.input_name,
                "outputs": self.output_names, "build": self.info}

    def __del__(self) -> None:
        try:
            for ptr, _ in self._buffers.values():
                self.rt.cudaFree(ptr)
            self.rt.cudaStreamDestroy(self.stream)
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
