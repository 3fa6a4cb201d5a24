"""The CUDA runtime through ctypes on the machine's own ``libcudart`` (as Polygraphy does): no cuda-python.

Why not cuda-python: its PyPI wheels for aarch64 are built for ARM servers (SBSA) with a newer
CUDA than JetPack 6's 12.6, so on a Jetson every call fails with error 35 (driver older than the
runtime), and cuda-python 13.x needs driver 580+ on x86. The image's own ``libcudart`` always
matches the image's CUDA, and the dozen calls TensorRT execution needs are easy to declare.

Lookup order (``find_libcudart``): ``$FDKD_CUDART`` (a file), a ``libcudart`` this process has
already loaded, ``$LD_LIBRARY_PATH``, ``/usr/local/cuda*/lib64`` (and ``targets/*/lib``, where
JetPack puts it), the system library folders, pip's ``nvidia/*/lib`` (CUDA wheels), then the
dynamic loader's own search. Every failing call raises ``CudaError`` with the function, the
error's name and number and the library's path (error 35 gets a hint: driver too old).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from pathlib import Path

# cudaError_t values worth a name even when the library cannot give one (cuda_runtime_api.h)
ERROR_NAMES = {
    1: "cudaErrorInvalidValue",
    2: "cudaErrorMemoryAllocation",
    3: "cudaErrorInitializationError",
    35: "cudaErrorInsufficientDriver",
    46: "cudaErrorDevicesUnavailable",
    100: "cudaErrorNoDevice",
    101: "cudaErrorInvalidDevice",
    209: "cudaErrorNoKernelImageForDevice",
    222: "cudaErrorUnsupportedPtxVersion",
    999: "cudaErrorUnknown",
}
HINTS = {
    35: "no NVIDIA driver is reachable, or it is older than this CUDA runtime: pass the GPU to the container "
        "(--gpus all / --runtime nvidia); on a Jetson use the image's own CUDA and an image of the host's "
        "L4T release (r36.4 image on an r36.4 host); on x86 upgrade the driver or use an older CUDA",
    100: "no CUDA device is visible: run the container with --gpus all (x86) or --runtime nvidia (Jetson), "
         "and on a Jetson the user must be in the video group",
    46: "the GPU is busy or in exclusive-process mode",
}

MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
ATTR_CC_MAJOR = 75  # cudaDevAttrComputeCapabilityMajor
ATTR_CC_MINOR = 76  # cudaDevAttrComputeCapabilityMinor
ATTR_SM_COUNT = 16  # cudaDevAttrMultiProcessorCount
ATTR_INTEGRATED = 18  # cudaDevAttrIntegrated (Jetson: 1)
PROPS_BYTES = 4096  # cudaDeviceProp is ~1 KiB and begins with char name[256] in every CUDA version

_c = ctypes
# name -> (restype, argtypes); cudaGetDeviceProperties is resolved separately (_v2 in CUDA 12+)
SIGNATURES = {
    "cudaGetDeviceCount": (_c.c_int, [_c.POINTER(_c.c_int)]),
    "cudaDeviceGetAttribute": (_c.c_int, [_c.POINTER(_c.c_int), _c.c_int, _c.c_int]),
    "cudaDriverGetVersion": (_c.c_int, [_c.POINTER(_c.c_int)]),
    "cudaRuntimeGetVersion": (_c.c_int, [_c.POINTER(_c.c_int)]),
    "cudaSetDevice": (_c.c_int, [_c.c_int]),
    "cudaMalloc": (_c.c_int, [_c.POINTER(_c.c_void_p), _c.c_size_t]),
    "cudaFree": (_c.c_int, [_c.c_void_p]),
    "cudaMemcpyAsync": (_c.c_int, [_c.c_void_p, _c.c_void_p, _c.c_size_t, _c.c_int, _c.c_void_p]),
    "cudaStreamCreate": (_c.c_int, [_c.POINTER(_c.c_void_p)]),
    "cudaStreamSynchronize": (_c.c_int, [_c.c_void_p]),
    "cudaStreamDestroy": (_c.c_int, [_c.c_void_p]),
    "cudaGetErrorName": (_c.c_char_p, [_c.c_int]),
    "cudaGetErrorString": (_c.c_char_p, [_c.c_int]),
}


class CudaError(RuntimeError):
    """A CUDA runtime call failed (or no runtime library could be loaded); ``code`` is the cudaError_t."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _loaded_libcudart() -> list[str]:
    """Paths of libcudart already mapped into this process (Linux), so we share TensorRT's runtime."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        path = line.split()[-1] if line.split() else ""
        if "/libcudart.so" in path and path not in found:
            found.append(path)
    return found


def candidate_dirs(environ: dict | None = None, sys_path: list[str] | None = None) -> list[str]:
    """Folders searched for ``libcudart.so*``, in order."""
    env = os.environ if environ is None else environ
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    for root in ("/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)):
        dirs += [f"{root}/lib64", f"{root}/lib", *sorted(glob.glob(f"{root}/targets/*/lib"))]
    dirs += ["/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib"]
    for entry in sys.path if sys_path is None else sys_path:  # pip's CUDA wheels (nvidia-cuda-runtime-cu12, cu13)
        dirs += sorted(glob.glob(os.path.join(entry or ".", "nvidia", "*", "lib")))
    seen: list[str] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def _version_key(path: str) -> tuple:
    """libcudart.so.12.6.77 sorts after libcudart.so.12 after libcudart.so (a bare symlink last resort)."""
    tail = os.path.basename(path).split(".so")[-1].lstrip(".")
    return tuple(int(p) if p.isdigit() else 0 for p in tail.split(".")) if tail else ()


def find_libcudart(environ: dict | None = None, sys_path: list[str] | None = None,
                   loaded: list[str] | None = None) -> list[str]:
    """Candidate libcudart files or loader names, best first (see the module docstring)."""
    env = os.environ if environ is None else environ
    out: list[str] = []
    if env.get("FDKD_CUDART"):
        out.append(env["FDKD_CUDART"])
    out += _loaded_libcudart() if loaded is None else loaded
    for d in candidate_dirs(env, sys_path):
        hits = [p for p in glob.glob(os.path.join(d, "libcudart.so*")) if os.path.isfile(p)]
        best = sorted(hits, key=_version_key, reverse=True)[:1]  # one per folder: its newest soname
        if best and os.path.realpath(best[0]) not in {os.path.realpath(p) for p in out}:
            out += best
    out += ["libcudart.so", "libcudart.so.12", "libcudart.so.13"]  # the dynamic loader's own search
    seen: list[str] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


def load_libcudart(environ: dict | None = None) -> tuple[object, str]:
    """(ctypes.CDLL, its path) for the first candidate that loads; CudaError listing what was tried."""
    env = os.environ if environ is None else environ
    tried = []
    for cand in find_libcudart(env):
        try:
            return ctypes.CDLL(cand), cand
        except OSError as e:
            tried.append(f"{cand}: {e}")
            if cand == env.get("FDKD_CUDART"):  # an explicit choice that fails is an error, not a hint
                raise CudaError(f"FDKD_CUDART={cand} cannot be loaded: {e}") from None
    raise CudaError("no CUDA runtime library (libcudart) could be loaded; tried:\n  " + "\n  ".join(tried[-6:]))


class CudaRuntime:
    """The calls TensorRT execution needs, each checked. ``lib`` is a CDLL (or a test double with the same names)."""

    def __init__(self, lib, path: str = "libcudart") -> None:
        self.lib, self.path = lib, path
        for name, (restype, argtypes) in SIGNATURES.items():
            fn = getattr(lib, name, None)
            if fn is None:
                if name.startswith("cudaGetError"):
                    continue  # only for messages
                raise CudaError(f"{path} has no {name}: not a CUDA runtime library")
            fn.restype, fn.argtypes = restype, argtypes
        self._props = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
        self._props.restype, self._props.argtypes = _c.c_int, [_c.c_void_p, _c.c_int]

    def error_name(self, code: int) -> str:
        fn = getattr(self.lib, "cudaGetErrorName", None)
        name = fn(code) if fn is not None else None
        name = name.decode() if isinstance(name, bytes) else name
        if not name or name == "unrecognized error code":
            name = ERROR_NAMES.get(code, "cudaError")
        return name

    def error_text(self, code: int) -> str:
        fn = getattr(self.lib, "cudaGetErrorString", None)
        text = fn(code) if fn is not None else None
        return text.decode() if isinstance(text, bytes) else (text or "")

    def check(self, code: int, call: str) -> None:
        code = int(code)
        if code == 0:
            return
        msg = f"{call} failed: {self.error_name(code)} ({code})"
        if text := self.error_text(code):
            msg += f": {text}"
        if code in HINTS:
            msg += f" [{HINTS[code]}]"
        raise CudaError(f"{msg} (CUDA runtime {self.path})", code)

    def _int_out(self, name: str, *args) -> int:
        v = _c.c_int()
        self.check(getattr(self.lib, name)(_c.byref(v), *args), name)
        return v.value

    def device_count(self) -> int:
        return self._int_out("cudaGetDeviceCount")

    def device_name(self, device: int = 0) -> str:
        buf = _c.create_string_buffer(PROPS_BYTES)
        self.check(self._props(buf, device), "cudaGetDeviceProperties")
        return buf.raw[:256].split(b"\x00", 1)[0].decode(errors="replace").strip()

    def attribute(self, attr: int, device: int = 0) -> int:
        return self._int_out("cudaDeviceGetAttribute", attr, device)

    def driver_version(self) -> int:
        return self._int_out("cudaDriverGetVersion")

    def runtime_version(self) -> int:
        return self._int_out("cudaRuntimeGetVersion")

    def malloc(self, nbytes: int) -> int:
        ptr = _c.c_void_p()
        self.check(self.lib.cudaMalloc(_c.byref(ptr), nbytes), f"cudaMalloc({nbytes})")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self.check(self.lib.cudaFree(ptr), "cudaFree")

    def memcpy_htod(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(dst, src, nbytes, MEMCPY_HOST_TO_DEVICE, stream), "cudaMemcpyAsync(H2D)")

    def memcpy_dtoh(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(dst, src, nbytes, MEMCPY_DEVICE_TO_HOST, stream), "cudaMemcpyAsync(D2H)")

    def stream_create(self) -> int:
        s = _c.c_void_p()
        self.check(self.lib.cudaStreamCreate(_c.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self.check(self.lib.cudaStreamDestroy(stream), "cudaStreamDestroy")


_RUNTIME: CudaRuntime | None = None


def runtime() -> CudaRuntime:
    """The process-wide CUDA runtime (loaded once); CudaError if no libcudart loads."""
    global _RUNTIME
    if _RUNTIME is None:
        lib, path = load_libcudart()
        _RUNTIME = CudaRuntime(lib, path)
    return _RUNTIME
