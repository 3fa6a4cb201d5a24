"""TensorRT build and runtime: engine checks that run anywhere, and GPU tests behind the `gpu` marker."""

import json

import numpy as np
import pytest

from serving.runtime import load_runtime
from serving.runtime.cuda_env import gpu_info, gpu_slug, tensorrt_version
from serving.runtime.tensorrt import EngineMismatch

HAS_TRT = tensorrt_version() is not None and gpu_info() is not None


def test_runtime_refuses_engine_without_or_with_mismatched_sidecar(tmp_path):
    plan = tmp_path / "student.fp16.h100-sm90.trt10.3.0.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(EngineMismatch, match="no sidecar"):
        load_runtime(plan)
    (tmp_path / f"{plan.stem}.build.json").write_text(json.dumps({"tensorrt": "0.0.1", "gpu": {}}))
    with pytest.raises(EngineMismatch, match="built with TensorRT 0.0.1"):
        load_runtime(plan)


def test_gpu_slug_names_card_and_architecture():
    assert gpu_slug({"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}) == "h100-80gb-hbm3-sm90"
    assert gpu_slug({"name": "Orin", "compute_capability": "8.7"}) == "orin-sm87"


def test_build_without_tensorrt_explains_why(tmp_path):
    from pipeline.build import BuildUnavailable, build_engine
    from pipeline.config import BuildConfig

    if HAS_TRT:
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(BuildUnavailable, match="TensorRT is not installed|no CUDA GPU"):
        build_engine(tmp_path / "student.onnx", "fp16", tmp_path, BuildConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision,source", [("fp32", "student.onnx"), ("fp16", "student.fp16.onnx"),
                                              ("int8", "student.int8.minmax.onnx")])
def test_engine_matches_onnxruntime(served_run, tmp_path, precision, source):
    from pipeline.build import build_engine
    from pipeline.config import BuildConfig

    plan = build_engine(served_run / source, precision, tmp_path, BuildConfig(max_batch=64))
    info = json.loads((tmp_path / f"{plan.stem}.build.json").read_text())
    assert info["precision"] == precision and info["profile"]["max"] == 64 and info["gpu"]["name"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(0).standard_normal((7, 1, 40, 101)).astype(np.float32)
    ref = load_runtime(served_run / "student.onnx")(x)
    got = load_runtime(plan)(x)
    tol = {"fp32": 1e-3, "fp16": 5e-2, "int8": 1.0}[precision]
    assert np.abs(got - ref).max() < tol


def test_validation_reads_each_engines_precision_from_its_own_sidecar(tmp_path):
    from pipeline.validate import discover

    for prec in ("fp16", "int8"):
        plan = tmp_path / f"student.{prec}.h100-sm90.trt10.3.0.plan"
        plan.write_bytes(b"x")
        (tmp_path / f"{plan.stem}.build.json").write_text(json.dumps({"precision": prec}))
    assert {a["name"].split(".")[1]: a["precision"] for a in discover(tmp_path)} == {"fp16": "fp16", "int8": "int8"}
