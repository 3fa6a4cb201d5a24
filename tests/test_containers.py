"""The container entrypoint and the GPU images' install rules, checked on a CPU.

The entrypoint (docker/entrypoint.sh) runs for real under /bin/sh with the real probe
(``python -m serving.runtime.cuda_env``); only ``fdkd`` is replaced by a script that records its
arguments, and, where a case needs TensorRT to import, a one-line ``tensorrt`` package stands in
for the absent bindings (a test double: these machines cannot install TensorRT).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _entrypoint(tmp_path, env_extra: dict, tensorrt_init: str | None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    calls = tmp_path / "fdkd-calls"
    fdkd = bin_dir / "fdkd"
    fdkd.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fdkd.chmod(0o755)
    paths = [str(ROOT)]
    if tensorrt_init is not None:
        (tmp_path / "fake" / "tensorrt").mkdir(parents=True)
        (tmp_path / "fake" / "tensorrt" / "__init__.py").write_text(tensorrt_init)
        paths.insert(0, str(tmp_path / "fake"))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(paths), "HOME": str(tmp_path),
           "FDKD_RUN_DIR": str(tmp_path / "run"), "FDKD_ENGINE_ROOT": str(tmp_path / "engines"), **env_extra}
    proc = subprocess.run(["/bin/sh", str(ROOT / "docker/entrypoint.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    return proc, (calls.read_text().splitlines() if calls.exists() else [])


# TensorRT imports, but the CUDA runtime named by FDKD_CUDART cannot load (as with no driver / no GPU passed)
NO_CUDA = {"FDKD_CUDART": "/nonexistent/libcudart.so.12"}


def test_tensorrt_without_cuda_exits_nonzero_and_says_why(tmp_path):
    proc, calls = _entrypoint(tmp_path, NO_CUDA, '__version__ = "10.3.0"\n')
    assert proc.returncode == 1 and calls == []  # nothing served
    assert "TensorRT 10.3.0 imports but CUDA does not" in proc.stderr
    assert "FDKD_CUDART=/nonexistent/libcudart.so.12 cannot be loaded" in proc.stderr
    assert "FDKD_ALLOW_CPU_FALLBACK=1" in proc.stderr


def _cuda_without_gpu() -> bool:
    """A real libcudart loads here, but there is no GPU (this project's CI machines)."""
    from serving.runtime.cuda_env import gpu_status
    from serving.runtime.cudart import CudaError, load_libcudart

    try:
        load_libcudart()
    except CudaError:
        return False
    return gpu_status()[0] is None


@pytest.mark.skipif(not _cuda_without_gpu(), reason="needs a CUDA runtime library and no GPU")
def test_real_cuda_runtime_without_a_gpu_is_reported_by_name(tmp_path):
    proc, calls = _entrypoint(tmp_path, {}, '__version__ = "10.3.0"\n')
    assert proc.returncode == 1 and calls == []
    assert re.search(r"cudaGetDeviceCount failed: cudaError\w+ \(\d+\)", proc.stderr), proc.stderr


def test_cpu_fallback_only_when_asked_and_still_logged(tmp_path):
    proc, calls = _entrypoint(tmp_path, {**NO_CUDA, "FDKD_ALLOW_CPU_FALLBACK": "1"}, '__version__ = "10.3.0"\n')
    assert proc.returncode == 0
    assert calls == [f"serve {tmp_path / 'run'} --host 0.0.0.0 --port 8000"]  # ONNX on the CPU, no engine dir
    assert "imports but CUDA does not" in proc.stderr and "serving ONNX on the CPU instead" in proc.stderr


def test_broken_tensorrt_is_a_gpu_failure_not_a_cpu_image(tmp_path):
    broken = 'raise ImportError("libnvinfer.so.10: cannot open shared object file")\n'
    proc, calls = _entrypoint(tmp_path, {}, broken)
    assert proc.returncode == 1 and calls == []
    assert "TensorRT is installed but does not import" in proc.stderr and "libnvinfer.so.10" in proc.stderr


def test_image_without_tensorrt_serves_onnx(tmp_path):
    proc, calls = _entrypoint(tmp_path, {}, None)
    assert proc.returncode == 0, proc.stderr
    assert calls == [f"serve {tmp_path / 'run'} --host 0.0.0.0 --port 8000"]


def test_probe_prints_the_engine_key_on_a_usable_gpu(monkeypatch, capsys):
    from serving.runtime import cuda_env
    from tests.trt_fakes import HostCudart, fake_tensorrt, install_cuda

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.8.0"))
    install_cuda(monkeypatch, HostCudart(name=b"NVIDIA L4", cc=(8, 9), sms=58, integrated=False))
    assert cuda_env.main() == 0
    assert capsys.readouterr().out.strip() == "l4-sm89-trt10.8.0"


def _run_lines(dockerfile: str) -> list[str]:
    """RUN instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / dockerfile).read_text())
    return [line for line in text.splitlines() if line.startswith("RUN ")]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gpu", "Dockerfile.jetson"])
def test_gpu_images_keep_the_base_images_tensorrt_and_cuda(dockerfile):
    pip_runs = [r for r in _run_lines(dockerfile) if "pip install" in r]
    assert pip_runs, f"{dockerfile} installs nothing with pip?"
    for run in pip_runs:
        args = shlex.split(run.split("pip install", 1)[1].split("&&")[0])
        constraints = [args[i + 1] for i, a in enumerate(args) if a == "-c"]
        requirements = [a for i, a in enumerate(args) if a != "-c" and (i == 0 or args[i - 1] != "-c")]
        assert "docker/constraints-gpu.txt" in constraints
        for req in requirements:  # the project's [serve] only: TensorRT and CUDA come from the image
            assert not re.search(r"tensorrt|cuda-python|onnxruntime-gpu|\[[^]]*gpu", req), req
        assert 'test "$trt_before" = "$trt_after"' in run  # the build fails if pip touched TensorRT
    constraints = (ROOT / "docker/constraints-gpu.txt").read_text()
    assert re.search(r"^cuda-python<13$", constraints, re.M) and re.search(r"^onnxruntime-gpu<0$", constraints, re.M)


def test_jetson_user_is_in_video_and_render_groups():
    run = next(r for r in _run_lines("Dockerfile.jetson") if "useradd" in r)
    assert re.search(r"useradd [^&]*--groups video", run)
    assert "getent group render" in run and "usermod -aG render" in run


def test_no_extra_installs_both_onnxruntime_packages():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def names(extra, seen=()):
        out = set()
        for req in extras[extra]:
            m = re.match(r"fdkd\[([^]]+)\]", req)
            if m:
                out |= {n for e in m.group(1).split(",") if e not in seen for n in names(e, (*seen, extra))}
            else:
                out.add(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower())
        return out

    for extra in extras:
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names(extra), extra
    assert "cuda-python" not in names("gpu")
