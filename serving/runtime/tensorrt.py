"""TensorRT engine execution (TensorRT 10 and 11 API); buffers and streams through ctypes on libcudart.

One execution context per runtime object; contexts are not thread-safe, so a server creates one
runtime per worker thread (the engine is deserialized from the same file). Inputs go through
``set_input_shape`` (its result checked: a batch outside the engine's profile is an error naming
the range) + ``set_tensor_address`` and ``execute_async_v3`` on a non-default stream.

Loading refuses, naming why: no ``build.json`` sidecar, a sidecar for another engine (its
``engine_sha256``), another TensorRT version, another GPU or Jetson module, an engine that does
not deserialize, or I/O tensors of a type this runtime does not feed (float32 or float16 in,
float32 or float16 out; float16 is converted on the host).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fdkd.serving.runtime.cuda_env import describe, gpu_slug, gpu_status, same_device, tensorrt_version


class EngineMismatch(RuntimeError):
    """The engine was built for another GPU or TensorRT version, or its sidecar is not its own."""


def build_info_path(plan: Path) -> Path:
    return plan.with_name(plan.stem + ".build.json")


def _numpy_dtypes(trt) -> dict:
    """TensorRT DataType -> numpy dtype, for the types an fdkd engine may expose at its I/O."""
    return {trt.DataType.FLOAT: np.dtype(np.float32), trt.DataType.HALF: np.dtype(np.float16)}


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
        blob = self.path.read_bytes()
        if info.get("engine_sha256") != hashlib.sha256(blob).hexdigest():
            raise EngineMismatch(f"{info_path.name} does not describe this {self.path.name} (engine_sha256 "
                                 f"{str(info.get('engine_sha256'))[:12]} vs the file's "
                                 f"{hashlib.sha256(blob).hexdigest()[:12]}); rebuild it with `fdkd build`")
        gpu, why = gpu_status()
        if gpu is None:
            raise RuntimeError(f"a TensorRT engine cannot run here: {why}")
        built_for = info.get("gpu", {})
        if not same_device(built_for, gpu):
            raise EngineMismatch(f"{self.path.name} was built for {describe(built_for)}, this is {describe(gpu)}")
        import tensorrt as trt

        from fdkd.serving.runtime.cudart import runtime

        self.info = info
        self.cuda = runtime()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self.stream = 0
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path.name} (see the log above)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise RuntimeError(f"{self.path.name} has {len(inputs)} inputs; fdkd engines have one")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        if not self.output_names:
            raise RuntimeError(f"{self.path.name} has no outputs")
        known = _numpy_dtypes(trt)
        self.dtypes = {}
        for n in names:
            dt = self.engine.get_tensor_dtype(n)
            if dt not in known:
                raise RuntimeError(f"{self.path.name}: tensor {n!r} is {dt}; this runtime feeds and reads "
                                   "float32 or float16 only (rebuild from fdkd's ONNX)")
            self.dtypes[n] = known[dt]
        self.max_batch = int(info["profile"]["max"])
        self.min_batch = int(info["profile"].get("min", 1))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.path.name} "
                               "(out of GPU memory?)")
        self.stream = self.cuda.stream_create()

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                self.cuda.free(ptr)
                self._buffers.pop(name)
            ptr = self.cuda.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) > self.max_batch:
            return np.concatenate([self(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        x = np.ascontiguousarray(x, dtype=self.dtypes[self.input_name])
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"{self.path.name} rejected input shape {tuple(x.shape)}: its profile takes batch "
                             f"{self.min_batch}..{self.max_batch} of {self.info['profile'].get('shape', 'its shape')}")
        cuda = self.cuda
        d_in = self._device(self.input_name, x.nbytes)
        cuda.memcpy_htod(d_in, x.ctypes.data, x.nbytes, self.stream)
        if not self.context.set_tensor_address(self.input_name, d_in):
            raise RuntimeError(f"TensorRT refused the input buffer of {self.path.name}")
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.path.name}: output {name!r} has unresolved shape {shape}")
            out = np.empty(shape, self.dtypes[name])
            outputs[name] = out
            if not self.context.set_tensor_address(name, self._device(name, max(out.nbytes, 1))):
                raise RuntimeError(f"TensorRT refused the buffer of output {name!r} of {self.path.name}")
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed (see the log above)")
        for name, out in outputs.items():
            cuda.memcpy_dtoh(out.ctypes.data, self._buffers[name][0], out.nbytes, self.stream)
        cuda.stream_synchronize(self.stream)
        return outputs[self.output_names[0]].astype(np.float32, copy=False)

    def mode(self) -> dict:
        """The execution mode validation records and the server must match (TensorRT fuses Q/DQ)."""
        gpu = self.info.get("gpu", {})
        return {"runtime": self.kind, "tensorrt": self.info.get("tensorrt"), "gpu": gpu.get("name"),
                "compute_capability": gpu.get("compute_capability"), "device": gpu_slug(gpu),
                "qdq": "fused" if self.info.get("precision") == "int8" else None}

    def describe(self) -> dict:
        return {"runtime": self.kind, "mode": self.mode(), "engine": self.path.name, "input": self.input_name,
                "outputs": self.output_names, "build": self.info}

    def __del__(self) -> None:
        try:
            for ptr, _ in self._buffers.values():
                self.cuda.free(ptr)
            if self.stream:
                self.cuda.stream_destroy(self.stream)
        except Exception:  # interpreter shutdown or a half-built object: CUDA may already be gone
            pass
