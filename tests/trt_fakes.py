"""Test doubles for the two libraries CI machines lack: libcudart (a GPU) and the ``tensorrt`` bindings.

They stand in for absent libraries only, so that fdkd's own code around them (checked return
values, write order, dtype and shape handling, buffer management, fallbacks) runs on a CPU:

- ``HostCudart``: the libcudart C functions fdkd declares, with "device" memory in host buffers
  (cudaMalloc allocates a ctypes buffer, cudaMemcpyAsync is memmove). It is wrapped by the real
  ``fdkd.serving.runtime.cudart.CudaRuntime``, so the ctypes marshalling code runs too.
- ``fake_tensorrt()``: a module with the TensorRT 10 / 11 Python API surface fdkd uses. Its builder
  records the flags it was built with; its "engine" multiplies the flattened input by a fixed
  matrix, reading and writing the addresses fdkd hands it, in the dtypes the engine declares.
  Every member is checked against ``TRT_SIGNATURES``, the real bindings' argument names and
  types as NVIDIA's pybind11 sources declare them (tags v10.3.0 and v11.0), and the enums carry
  NvInfer.h's values per major version (STRONGLY_TYPED is 1 in 10 and 0 in 11; 11 has no
  FP16/INT8 builder flags): a call fdkd makes with a wrong name, arity, keyword or argument type
  fails the test as it would fail on a GPU machine.

What these cannot show (real kernels, TF32 numerics, real timing caches) is covered by the
``gpu``-marked tests and ``bench/gpu/check.sh`` on a machine with a GPU.
"""

from __future__ import annotations

import ctypes
import enum
import functools
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
    """Make ``fdkd.serving.runtime.cudart.runtime()`` return a real CudaRuntime over ``lib``."""
    from fdkd.serving.runtime import cudart

    monkeypatch.setattr(cudart, "_RUNTIME", cudart.CudaRuntime(lib, "/fake/libcudart.so.12"))


# --- The TensorRT Python bindings fdkd calls, as NVIDIA's pybind11 code declares them ---
#
# Read from NVIDIA/TensorRT's binding sources at tags v10.3.0 (JetPack 6.1/6.2) and v11.0: python/src/infer/pyCore.cpp
# (Logger, Builder, IBuilderConfig, IOptimizationProfile, ITimingCache, Runtime, ICudaEngine, IExecutionContext and the
# enums), python/src/parsers/pyOnnx.cpp (OnnxParser), python/src/infer/pyGraph.cpp (INetworkDefinition, ITensor),
# python/src/infer/pyFoundationalTypes.cpp (DataType); the enum values from include/NvInfer.h and NvInferRuntime*.h.
# One entry per member fdkd's code touches: the Python argument names of the ``.def`` ("name" required, "name=" with
# a default; pybind11 takes them positionally or by keyword) and what each must be, or PROPERTY. The same in 10.3
# and 11.0 unless noted. Every fake method below is checked against this table on each call (a wrong name is an
# AttributeError, a wrong arity, keyword or argument type a TypeError, as the real bindings raise), and a fake may
# define no public member the table lacks.
PROPERTY = "property"
BUFFER = (bytes, bytearray, memoryview)  # py::buffer
SHAPE = (tuple, list)  # set_input_shape takes a tuple, a list or Dims; set_shape Dims (built from a tuple)
TRT_SIGNATURES: dict[tuple[str, str], tuple | str] = {
    ("Logger", "__init__"): (("min_severity=", None),),  # default Logger.WARNING
    ("Logger", "WARNING"): PROPERTY,  # ILogger.Severity.WARNING, exported into the class scope
    ("Builder", "__init__"): (("logger", "Logger"),),
    ("Builder", "create_network"): (("flags=", int),),  # createNetworkV2, flags default 0
    ("Builder", "create_builder_config"): (),
    ("Builder", "create_optimization_profile"): (),
    ("Builder", "build_serialized_network"): (("network", "INetworkDefinition"), ("config", "IBuilderConfig")),
    ("OnnxParser", "__init__"): (("network", "INetworkDefinition"), ("logger", "Logger")),
    ("OnnxParser", "parse"): (("model", BUFFER), ("path=", str)),
    ("OnnxParser", "num_errors"): PROPERTY,
    ("OnnxParser", "get_error"): (("index", int),),
    ("INetworkDefinition", "get_input"): (("index", int),),
    ("ITensor", "name"): PROPERTY,
    ("ITensor", "shape"): PROPERTY,
    ("IOptimizationProfile", "set_shape"): (("input", str), ("min", SHAPE), ("opt", SHAPE), ("max", SHAPE)),
    ("IBuilderConfig", "set_memory_pool_limit"): (("pool", "MemoryPoolType"), ("pool_size", int)),
    ("IBuilderConfig", "clear_flag"): (("flag", "BuilderFlag"),),
    ("IBuilderConfig", "set_flag"): (("flag", "BuilderFlag"),),
    ("IBuilderConfig", "get_flag"): (("flag", "BuilderFlag"),),
    ("IBuilderConfig", "add_optimization_profile"): (("profile", "IOptimizationProfile"),),
    ("IBuilderConfig", "create_timing_cache"): (("serialized_timing_cache", BUFFER),),
    ("IBuilderConfig", "set_timing_cache"): (("cache", "ITimingCache"), ("ignore_mismatch", bool)),
    ("IBuilderConfig", "get_timing_cache"): (),
    ("ITimingCache", "serialize"): (),
    ("Runtime", "__init__"): (("logger", "Logger"),),
    ("Runtime", "deserialize_cuda_engine"): (("serialized_engine", BUFFER),),  # or a stream_reader (unused)
    ("ICudaEngine", "num_io_tensors"): PROPERTY,
    ("ICudaEngine", "get_tensor_name"): (("index", int),),
    ("ICudaEngine", "get_tensor_mode"): (("name", str),),
    ("ICudaEngine", "get_tensor_dtype"): (("name", str),),
    # 10.3: strategy=STATIC; 11.0 adds an overload runtime_config=None: both callable with no argument
    ("ICudaEngine", "create_execution_context"): (("strategy=", None),),
    ("IExecutionContext", "set_input_shape"): (("name", str), ("shape", SHAPE)),
    ("IExecutionContext", "get_tensor_shape"): (("name", str),),
    ("IExecutionContext", "set_tensor_address"): (("name", str), ("memory", int)),
    ("IExecutionContext", "execute_async_v3"): (("stream_handle", int),),
}
# enum members by major version (the subset of NvInfer.h's values fdkd or these fakes name)
TRT_ENUMS = {
    10: {"BuilderFlag": {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
                         "TF32": 6, "SPARSE_WEIGHTS": 7, "OBEY_PRECISION_CONSTRAINTS": 9, "BF16": 17},
         "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}},
    # 11.0 removed the FP16/INT8/BF16 builder flags (precision comes from the strongly typed graph) and
    # OBEY_PRECISION_CONSTRAINTS; STRONGLY_TYPED is kept, deprecated and always on, and renumbered to 0
    11: {"BuilderFlag": {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                         "SPARSE_WEIGHTS": 7},
         "NetworkDefinitionCreationFlag": {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1,
                                           "PREFER_AOT_PYTHON_PLUGINS": 2}},
}
COMMON_ENUMS = {"DataType": {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6,
                             "BF16": 7, "INT64": 8, "INT4": 9},
                "TensorIOMode": {"NONE": 0, "INPUT": 1, "OUTPUT": 2},
                "MemoryPoolType": {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3,
                                   "TACTIC_DRAM": 4, "TACTIC_SHARED_MEMORY": 5}}


class _BindingEnum(enum.IntEnum):
    """pybind11 enums print as ``DataType.INT8`` and convert with int()."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _check_args(binding: str, member: str, spec: tuple, args: tuple, kwargs: dict, types: dict) -> None:
    """Raise TypeError unless ``args``/``kwargs`` fit ``spec`` the way pybind11 would accept them."""
    names = [n.rstrip("=") for n, _ in spec]
    required = [n for n, _ in spec if not n.endswith("=")]
    where = f"{binding}.{member}()"
    if len(args) > len(names):
        raise TypeError(f"{where}: incompatible function arguments: {len(args)} given, takes {names}")
    bound = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k not in names:
            raise TypeError(f"{where}: incompatible function arguments: no argument named {k!r} (takes {names})")
        if k in bound:
            raise TypeError(f"{where}: argument {k!r} given twice")
        bound[k] = v
    missing = [n for n in required if n not in bound]
    if missing:
        raise TypeError(f"{where}: incompatible function arguments: missing {missing}")
    for (raw, want), name in zip(spec, names, strict=True):
        if name not in bound or want is None or (raw.endswith("=") and bound[name] is None):
            continue
        want_t = types[want] if isinstance(want, str) else want
        value = bound[name]
        if want_t is int and isinstance(value, bool) or not isinstance(value, want_t):
            raise TypeError(f"{where}: argument {name!r} must be {getattr(want, '__name__', want)}, "
                            f"got {type(value).__name__}")


def _binding(name: str, types: dict):
    """Class decorator: the fake class stands for TensorRT's ``name``; every public member is checked against
    TRT_SIGNATURES (defined there, called with the real arity, argument names and types)."""
    def wrap(cls):
        for attr, value in list(vars(cls).items()):
            if attr.startswith("_") and attr != "__init__":
                continue
            spec = TRT_SIGNATURES.get((name, attr))
            if spec is None and attr == "__init__":
                continue  # objects fdkd gets from factories (engine, context, config...): the fake's own constructor
            if spec is None:
                raise AssertionError(f"fake {name}.{attr} is not in TRT_SIGNATURES: the real bindings have no such "
                                     "member fdkd may call")
            if spec == PROPERTY:
                continue
            if not callable(value):
                raise AssertionError(f"fake {name}.{attr} must be a method")

            def checked(self, *args, _f=value, _attr=attr, _spec=spec, **kwargs):
                _check_args(name, _attr, _spec, args, kwargs, types)
                return _f(self, *args, **kwargs)
            checked.__name__ = attr
            setattr(cls, attr, checked)
        cls.__name__ = cls.__qualname__ = name
        types[name] = cls
        return cls
    return wrap


def fake_tensorrt(version="10.3.0", io_dtype="FLOAT", out_dtype=None, timing_cache_ok=(b"", b"CACHE:this-gpu"),
                  build_fails=False) -> types.ModuleType:
    """A ``tensorrt`` module with the API surface fdkd's build and runtime use (see the module docstring), each call
    checked against ``TRT_SIGNATURES``; the enums of ``version``'s major (10 or 11)."""
    major = int(version.split(".")[0])
    if major not in TRT_ENUMS:
        raise ValueError(f"no binding table for TensorRT {version}; fdkd supports 10 and 11")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    for enum_name, members in {**COMMON_ENUMS, **TRT_ENUMS[major]}.items():
        setattr(trt, enum_name, _BindingEnum(enum_name, members))
    kinds: dict = {"BuilderFlag": trt.BuilderFlag, "MemoryPoolType": trt.MemoryPoolType}
    binding = functools.partial(_binding, types=kinds)
    dtypes = {"input": getattr(trt.DataType, io_dtype), "logits": getattr(trt.DataType, out_dtype or io_dtype)}
    np_of = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
    trt.built = []  # one record per build_serialized_network call

    @binding("Logger")
    class Logger:
        WARNING = 2  # ILogger.Severity.WARNING

        def __init__(self, min_severity=None):
            self.min_severity = min_severity

    @binding("ITimingCache")
    class TimingCache:
        def __init__(self, blob: bytes):
            self.blob = blob

        def serialize(self):
            return b"CACHE:this-gpu"

    @binding("IOptimizationProfile")
    class Profile:
        def set_shape(self, input, min, opt, max):  # noqa: A002 - the bindings' own argument names
            self.shapes = (tuple(min), tuple(opt), tuple(max))

    @binding("IBuilderConfig")
    class Config:
        def __init__(self):
            self._flags = {trt.BuilderFlag.TF32: True}  # TensorRT's default
            self._cache = None

        def set_memory_pool_limit(self, pool, pool_size):
            self._workspace = pool_size

        def clear_flag(self, flag):
            self._flags[flag] = False

        def set_flag(self, flag):
            self._flags[flag] = True

        def get_flag(self, flag):
            return self._flags.get(flag, False)

        def add_optimization_profile(self, profile):
            self._profile = profile
            return 0

        def create_timing_cache(self, serialized_timing_cache):
            blob = bytes(serialized_timing_cache)
            return TimingCache(blob) if blob.startswith(b"CACHE:") or not blob else None

        def set_timing_cache(self, cache, ignore_mismatch):
            ok = cache.blob in timing_cache_ok
            if ok:
                self._cache = cache
            return ok

        def get_timing_cache(self):
            return self._cache

    @binding("ITensor")
    class Tensor:
        name, shape = "input", (-1, 1, 3, 4)

    @binding("INetworkDefinition")
    class Network:
        def get_input(self, index):
            return Tensor()

    @binding("Builder")
    class Builder:
        def __init__(self, logger):
            self._network_flags = None

        def create_network(self, flags=0):
            self._network_flags = flags
            known = sum(1 << int(f) for f in trt.NetworkDefinitionCreationFlag)
            if flags & ~known:
                raise RuntimeError(f"create_network: flags {flags:#b} name no NetworkDefinitionCreationFlag of "
                                   f"TensorRT {version}")
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append({"tf32": config.get_flag(trt.BuilderFlag.TF32), "cache": config._cache,
                              "network_flags": self._network_flags,
                              "flags": {f.name for f, on in config._flags.items() if on}})
            if build_fails:
                return None
            return b"ENGINE:" + json.dumps({"max": config._profile.shapes[2][0]}).encode()

    @binding("OnnxParser")
    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, model, path=None):
            return True

        def get_error(self, index):
            raise IndexError(index)

    @binding("IExecutionContext")
    class Context:
        def __init__(self, engine):
            self._engine, self._shapes, self._addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= self._engine._max_batch or tuple(shape[1:]) != Tensor.shape[1:]:
                return False
            self._shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return (self._shapes["input"][0], CLASSES) if name == "logits" else self._shapes[name]

        def set_tensor_address(self, name, memory):
            self._addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle):
            n = self._shapes["input"][0]
            x_t, y_t = np_of[dtypes["input"]], np_of[dtypes["logits"]]
            nbytes = n * FEATURES * np.dtype(x_t).itemsize
            x = np.frombuffer(ctypes.string_at(self._addresses["input"], nbytes), x_t).reshape(n, FEATURES)
            y = np.ascontiguousarray((x.astype(np.float32) @ WEIGHTS).astype(y_t))
            ctypes.memmove(self._addresses["logits"], y.ctypes.data, y.nbytes)
            return True

    @binding("ICudaEngine")
    class Engine:
        num_io_tensors = 2

        def __init__(self, blob):
            self._max_batch = json.loads(blob[len(b"ENGINE:"):])["max"]

        def get_tensor_name(self, index):
            return ("input", "logits")[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return dtypes[name]

        def create_execution_context(self, strategy=None):
            return Context(self)

    @binding("Runtime")
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, serialized_engine):
            blob = bytes(serialized_engine)
            return Engine(blob) if blob.startswith(b"ENGINE:") else None

    for cls in (Logger, Builder, OnnxParser, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt
