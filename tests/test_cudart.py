"""The ctypes CUDA runtime: library lookup, error mapping and the API shape on any machine; real calls on a GPU.

CPU tests use the real ``CudaRuntime`` over ``tests.trt_fakes.HostCudart`` (a stand-in for the
absent libcudart, with "device" memory in host buffers), and the machine's real libcudart where
one is installed without a GPU (every call then fails with a named error, which is what we check).
"""

import ctypes
import os

import numpy as np
import pytest

from fdkd.serving.runtime import cudart
from fdkd.serving.runtime.cuda_env import gpu_status
from tests.trt_fakes import HostCudart, install_cuda


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_lookup_order_env_then_loaded_then_ld_library_path_then_pip_wheels(tmp_path):
    ld = _touch(tmp_path / "ld" / "libcudart.so.12.6.77")
    _touch(tmp_path / "ld" / "libcudart.so.12")  # an older soname in the same folder is not listed twice
    wheel = _touch(tmp_path / "site" / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
    env = {"FDKD_CUDART": "/opt/explicit/libcudart.so", "LD_LIBRARY_PATH": str(tmp_path / "ld")}
    found = cudart.find_libcudart(env, sys_path=[str(tmp_path / "site")], loaded=["/already/libcudart.so.12"])
    assert found[:3] == ["/opt/explicit/libcudart.so", "/already/libcudart.so.12", ld]
    assert found.index(ld) < found.index(wheel)
    assert str(tmp_path / "ld" / "libcudart.so.12") not in found
    assert found[-3:] == ["libcudart.so", "libcudart.so.12", "libcudart.so.13"]  # the loader's own search last


def test_explicit_library_that_does_not_load_is_an_error_naming_it(tmp_path):
    bogus = _touch(tmp_path / "libcudart.so.12")  # empty file: not an ELF object
    with pytest.raises(cudart.CudaError, match=f"FDKD_CUDART={bogus} cannot be loaded"):
        cudart.load_libcudart({"FDKD_CUDART": bogus})


def test_failed_call_names_function_error_code_hint_and_library(monkeypatch):
    lib = HostCudart(fail={"cudaGetDeviceCount": 35})
    rt = cudart.CudaRuntime(lib, "/usr/local/cuda/lib64/libcudart.so.12")
    with pytest.raises(cudart.CudaError) as e:
        rt.device_count()
    msg = str(e.value)
    assert e.value.code == 35
    assert "cudaGetDeviceCount failed: cudaErrorInsufficientDriver (35)" in msg
    assert "L4T release" in msg and "/usr/local/cuda/lib64/libcudart.so.12" in msg
    # a code the library cannot name still gets a name from fdkd's table
    assert cudart.CudaRuntime(HostCudart(), "x").error_name(100) == "cudaErrorNoDevice"


def test_library_without_cuda_symbols_is_rejected():
    class NotCuda:
        pass

    with pytest.raises(cudart.CudaError, match="has no cudaGetDeviceCount: not a CUDA runtime library"):
        cudart.CudaRuntime(NotCuda(), "/usr/lib/libm.so.6")


def test_memory_round_trip_and_device_query_through_ctypes(monkeypatch):
    lib = HostCudart(name=b"NVIDIA H100 80GB HBM3", cc=(9, 0), sms=132, integrated=False)
    rt = cudart.CudaRuntime(lib, "fake")
    assert rt.device_count() == 1 and rt.device_name() == "NVIDIA H100 80GB HBM3"
    x = np.arange(10, dtype=np.float32)
    ptr, stream = rt.malloc(x.nbytes), rt.stream_create()
    rt.memcpy_htod(ptr, x.ctypes.data, x.nbytes, stream)
    y = np.empty_like(x)
    rt.memcpy_dtoh(y.ctypes.data, ptr, y.nbytes, stream)
    rt.stream_synchronize(stream)
    np.testing.assert_array_equal(x, y)
    rt.free(ptr)
    assert ptr not in lib.buffers
    install_cuda(monkeypatch, lib)
    info, why = gpu_status()
    assert why is None and info["compute_capability"] == "9.0" and info["multiprocessors"] == 132
    assert info["integrated"] is False and info["driver"] == 12060


def test_gpu_status_explains_a_failing_cuda(monkeypatch):
    install_cuda(monkeypatch, HostCudart(fail={"cudaGetDeviceCount": 35}))
    info, why = gpu_status()
    assert info is None and "cudaErrorInsufficientDriver (35)" in why


def _real_libcudart():
    for cand in cudart.find_libcudart():
        try:
            return ctypes.CDLL(cand), cand
        except OSError:
            continue
    return None, None


@pytest.mark.skipif(_real_libcudart()[0] is None, reason="no libcudart on this machine")
def test_real_libcudart_loads_and_names_its_errors():
    lib, path = _real_libcudart()
    rt = cudart.CudaRuntime(lib, path)
    assert rt.runtime_version() >= 11000  # answered without a driver
    assert rt.error_name(35) == "cudaErrorInsufficientDriver"
    assert "driver" in rt.error_text(35).lower()
    try:
        n = rt.device_count()
    except cudart.CudaError as e:  # no GPU here: a named error, never a crash or a silent zero
        assert e.code in (35, 100, 3, 999) and "cudaGetDeviceCount failed: cudaError" in str(e)
    else:
        assert n >= 1


@pytest.mark.gpu
@pytest.mark.skipif(not os.path.exists("/dev/nvidia0") and not os.path.exists("/dev/nvhost-ctrl-gpu"),
                    reason="needs a CUDA GPU")
def test_real_gpu_memory_round_trip():
    rt = cudart.runtime()
    assert rt.device_count() >= 1 and rt.device_name()
    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    ptr, stream = rt.malloc(x.nbytes), rt.stream_create()
    y = np.empty_like(x)
    rt.memcpy_htod(ptr, x.ctypes.data, x.nbytes, stream)
    rt.memcpy_dtoh(y.ctypes.data, ptr, y.nbytes, stream)
    rt.stream_synchronize(stream)
    rt.free(ptr)
    rt.stream_destroy(stream)
    np.testing.assert_array_equal(x, y)
    info, why = gpu_status()
    assert why is None and info["name"] == rt.device_name()
