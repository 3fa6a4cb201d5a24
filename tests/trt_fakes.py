"""Test doubles for the two libraries CI machines lack: libcudart (a GPU) and the ``tensorrt`` bindings.

They stand in for absent libraries only, so that fdkd's own code around them (checked return
values, write order, dtype and shape handling, buffer management, fallbacks) runs on a CPU:

- ``HostCudart``: the libcudart C functions fdkd declares, with "device" memory in host buffers
  (cudaMalloc allocates a ctypes buffer, cudaMemcpyAsync is memmove). It is wrapped by the real
  ``serving.runtime.cudart.CudaRuntime``, so the ctypes marshalling code runs too.
- ``fake_tensorrt()``: a module with the TensorRT 10 Python API surface fdkd uses. Its builder
  records the flags it was built with; its "engine" multiplies the flattened input by a fixed
  matrix, reading and writing the addresses fdkd hands it, in the dtypes the engine declares.

What these cannot show (real kernels, TF32 numerics, real timing caches) is covered by the
``gpu``-marked tests and ``bench/gpu_check.sh`` on a machine with a GPU.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types

import numpy as np

FEATURES, CLASSES = 12, 5
WEIGHTS = np.arange(FEATURES * CLASSES, dtype=np.float32).reshape(FEATURES, CLASSES) / 100.0


def _plain(method):
    def call(*args):
        return method(*args)
    return call


class HostCudart:
    """libcudart's C API over host memory: return codes, out-parameters through byref, like the real one."""

    def __init__(self, name=b"Orin", cc=(8, 7), sms=8, integrated=True, count=1, fail: dict | None = None):
        self.name, self.cc, self.sms, self.integrated, self.count = name, cc, sms, integrated, count
        self.fail = fail or {}  # function name -> error code to return
        self.buffers: dict[int, ctypes.Array] = {}
        self.calls: list[str] = []
        for name in [n for n in dir(self) if n.startswith("cuda")]:  # plain functions: ctypes sets restype on them
            setattr(self, name, _plain(getattr(self, name)))

    def _ret(self, fn: str) -> int:
        self.calls.append(fn)
        return self.fail.get(fn, 0)

    def cudaGetDeviceCount(self, p):
        p._obj.value = self.count
        return self._ret("cudaGetDeviceCount")

    def cudaGetDeviceProperties_v2(self, buf, device):
        ctypes.memmove(buf, self.name + b"\x00", len(self.name) + 1)
        return self._ret("cudaGetDeviceProperties")

    def cudaDeviceGetAttribute(self, p, attr, device):
        p._obj.value = {75: self.cc[0], 76: self.cc[1], 16: self.sms, 18: int(self.integrated)}[attr]
        return self._ret("cudaDeviceGetAttribute")

    def cudaDriverGetVersion(self, p):
        p._obj.value = 12060
        return self._ret("cudaDriverGetVersion")

    def cudaRuntimeGetVersion(self, p):
        p._obj.value = 12060
        return self._ret("cudaRuntimeGetVersion")

    def cudaSetDevice(self, device):
        return self._ret("cudaSetDevice")

    def cudaMalloc(self, p, nbytes):
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        p._obj.value = ctypes.addressof(buf)
        return self._ret("cudaMalloc")

    def cudaFree(self, ptr):
        self.buffers.pop(int(ptr), None)
        return self._ret("cudaFree")

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return self._ret("cudaMemcpyAsync")

    def cudaStreamCreate(self, p):
        p._obj.value = 0x5151
        return self._ret("cudaStreamCreate")

    def cudaStreamSynchronize(self, s):
        return self._ret("cudaStreamSynchronize")

    def cudaStreamDestroy(self, s):
        return self._ret("cudaStreamDestroy")

    def cudaGetErrorName(self, code):
        names = {35: b"cudaErrorInsufficientDriver", 2: b"cudaErrorMemoryAllocation"}
        return names.get(code, b"unrecognized error code")

    def cudaGetErrorString(self, code):
        return {35: b"CUDA driver version is insufficient for CUDA runtime version"}.get(code, b"")


def install_cuda(monkeypatch, lib: HostCudart) -> None:
    """Make ``serving.runtime.cudart.runtime()`` return a real CudaRuntime over ``lib``."""
    from serving.runtime import cudart

    monkeypatch.setattr(cudart, "_RUNTIME", cudart.CudaRuntime(lib, "/fake/libcudart.so.12"))


def fake_tensorrt(version="10.3.0", io_dtype="FLOAT", out_dtype=None, timing_cache_ok=(b"", b"CACHE:this-gpu"),
                  build_fails=False) -> types.ModuleType:
    """A ``tensorrt`` module with the API surface fdkd's build and runtime use (see the module docstring)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType = enum.Enum("DataType", "FLOAT HALF INT8 INT32 BOOL")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.BuilderFlag = enum.Enum("BuilderFlag", "TF32 FP16 INT8")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    dtypes = {"input": getattr(trt.DataType, io_dtype), "logits": getattr(trt.DataType, out_dtype or io_dtype)}
    np_of = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
    trt.built = []  # one record per build_serialized_network call

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            pass

    class TimingCache:
        def __init__(self, blob: bytes):
            self.blob = blob

        def serialize(self):
            return b"CACHE:this-gpu"

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32: True}  # TensorRT's default
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def clear_flag(self, f):
            self.flags[f] = False

        def set_flag(self, f):
            self.flags[f] = True

        def get_flag(self, f):
            return self.flags.get(f, False)

        def add_optimization_profile(self, p):
            self.profile = p

        def create_timing_cache(self, blob):
            return TimingCache(bytes(blob)) if bytes(blob).startswith(b"CACHE:") or not blob else None

        def set_timing_cache(self, cache, ignore_mismatch):
            ok = cache.blob in timing_cache_ok
            if ok:
                self.cache = cache
            return ok

        def get_timing_cache(self):
            return self.cache

    class Tensor:
        name, shape = "input", (-1, 1, 3, 4)

    class Network:
        def get_input(self, i):
            return Tensor()

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            self.shapes = (mn, opt, mx)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            self.network_flags = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append({"tf32": config.get_flag(trt.BuilderFlag.TF32), "cache": config.cache})
            if build_fails:
                return None
            return b"ENGINE:" + json.dumps({"max": config.profile.shapes[2][0]}).encode()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, blob):
            return True

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= self.engine.max_batch or tuple(shape[1:]) != Tensor.shape[1:]:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return (self.shapes["input"][0], CLASSES) if name == "logits" else self.shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream):
            n = self.shapes["input"][0]
            x_t, y_t = np_of[dtypes["input"]], np_of[dtypes["logits"]]
            nbytes = n * FEATURES * np.dtype(x_t).itemsize
            x = np.frombuffer(ctypes.string_at(self.addresses["input"], nbytes), x_t).reshape(n, FEATURES)
            y = np.ascontiguousarray((x.astype(np.float32) @ WEIGHTS).astype(y_t))
            ctypes.memmove(self.addresses["logits"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, blob):
            self.max_batch = json.loads(blob[len(b"ENGINE:"):])["max"]

        def get_tensor_name(self, i):
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return dtypes[name]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine(bytes(blob)) if bytes(blob).startswith(b"ENGINE:") else None

    for cls in (Logger, Builder, OnnxParser, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt
