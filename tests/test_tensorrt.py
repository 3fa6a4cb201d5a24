"""TensorRT build and runtime: engine checks that run anywhere, and GPU tests behind the `gpu` marker.

Without a GPU, the build and runtime code runs against test doubles for the two absent libraries
(``tests/trt_fakes.py``: a ``tensorrt`` module and a host-memory libcudart): what is checked is
fdkd's own code around them (TF32 cleared, timing-cache fallback, write order, sidecar hash,
dtype and profile checks, chunking), never the fakes' arithmetic.
"""

import hashlib
import json
import sys

import numpy as np
import pytest

from fdkd.serving.runtime import load_runtime
from fdkd.serving.runtime.cuda_env import engine_key, gpu_info, gpu_slug, jetson_module, same_device, tensorrt_version
from fdkd.serving.runtime.tensorrt import EngineMismatch
from tests.trt_fakes import CLASSES, FEATURES, WEIGHTS, HostCudart, fake_tensorrt, install_cuda

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
    from fdkd.pipeline.build import BuildUnavailable, build_engine
    from fdkd.pipeline.config import BuildConfig

    if HAS_TRT:
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(BuildUnavailable, match="TensorRT is not installed|no CUDA GPU"):
        build_engine(tmp_path / "student.onnx", "fp16", tmp_path, BuildConfig())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision,source", [("fp32", "student.onnx"), ("fp16", "student.fp16.onnx"),
                                              ("int8", "student.int8.minmax.onnx")])
def test_engine_matches_onnxruntime(served_run, tmp_path, precision, source):
    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.config import BuildConfig

    plan = build_engine(served_run / source, precision, tmp_path, BuildConfig(max_batch=64))
    info = json.loads((tmp_path / f"{plan.stem}.build.json").read_text())
    assert info["precision"] == precision and info["profile"]["max"] == 64 and info["gpu"]["name"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(0).standard_normal((7, 1, 40, 101)).astype(np.float32)
    ref = load_runtime(served_run / "student.onnx")(x)
    got = load_runtime(plan)(x)
    tol = {"fp32": 1e-4, "fp16": 5e-2, "int8": 1.0}[precision]  # fp32: the gate's 1e-4 holds only with TF32 off
    assert np.abs(got - ref).max() < tol


def test_validation_reads_each_engines_precision_from_its_own_sidecar(tmp_path):
    from fdkd.pipeline.validate import discover

    for prec in ("fp16", "int8"):
        plan = tmp_path / f"student.{prec}.h100-sm90.trt10.3.0.plan"
        plan.write_bytes(b"x")
        (tmp_path / f"{plan.stem}.build.json").write_text(json.dumps({"precision": prec}))
    assert {a["name"].split(".")[1]: a["precision"] for a in discover(tmp_path)} == {"fp16": "fp16", "int8": "int8"}


# --- On the CPU with test doubles for the absent tensorrt bindings and libcudart (tests/trt_fakes.py) ---

JETSON_BOARDS = {  # device-tree model, compatible (NUL-separated, board first)
    "orin-nano": ("NVIDIA Jetson Orin Nano Developer Kit\0", "nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0"
                  "nvidia,tegra234\0"),
    "orin-nx": ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0",
                "nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0"),
    "agx-orin": ("NVIDIA Jetson AGX Orin Developer Kit\0", "nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0"
                 "nvidia,tegra234\0"),
}
TEGRA_RELEASE = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13\n"


def _board(root, model, compat, tree="proc/device-tree"):
    (root / tree).mkdir(parents=True, exist_ok=True)
    (root / tree / "model").write_bytes(model.encode())
    (root / tree / "compatible").write_bytes(compat.encode())
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/nv_tegra_release").write_text(TEGRA_RELEASE)
    return root


def test_jetson_modules_get_distinct_engine_keys(tmp_path):
    orin = {"name": "Orin", "compute_capability": "8.7", "multiprocessors": 8, "integrated": True}
    keys, infos = {}, {}
    for board, (model, compat) in JETSON_BOARDS.items():
        module = jetson_module(_board(tmp_path / board, model, compat), environ={})
        assert module["l4t"] == "36.4.0"
        infos[board] = {**orin, "jetson": module}
        keys[board] = engine_key(infos[board], "10.3.0")
    assert keys["orin-nano"] == "jetson-orin-nano-developer-kit-p3767-0005-sm87-trt10.3.0"
    assert keys["agx-orin"] == "jetson-agx-orin-developer-kit-p3701-0005-sm87-trt10.3.0"
    assert len(set(keys.values())) == 3
    assert not same_device(infos["orin-nano"], infos["orin-nx"]) and same_device(infos["agx-orin"], infos["agx-orin"])
    assert not same_device({}, infos["agx-orin"])  # a sidecar that names no GPU matches none


def test_jetson_module_from_a_mounted_host_tree_and_none_elsewhere(tmp_path):
    model, compat = JETSON_BOARDS["orin-nx"]
    host = _board(tmp_path / "host", model, compat, tree="dt")
    assert jetson_module(tmp_path / "container", environ={"FDKD_DEVICE_TREE": str(host / "dt")})["part"] == "p3767-0000"
    assert jetson_module(tmp_path / "x86", environ={}) is None  # no device tree, no nv_tegra_release
    # an integrated GPU whose board cannot be read still keys on its SM count
    assert engine_key({"name": "Orin", "compute_capability": "8.7", "multiprocessors": 4, "integrated": True},
                      "10.3.0") == "orin-4sms-sm87-trt10.3.0"


@pytest.fixture()
def fake_gpu(monkeypatch):
    """A fake tensorrt module on sys.modules and a host-memory libcudart: an 'H100' this process can 'build' on."""
    def install(**kw):
        trt = fake_tensorrt(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        install_cuda(monkeypatch, HostCudart(name=b"NVIDIA H100 80GB HBM3", cc=(9, 0), sms=132, integrated=False))
        return trt
    return install


def _onnx(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "student.onnx"
    src.write_bytes(b"onnx bytes")
    return src


def test_build_clears_tf32_and_writes_engine_last_with_its_sidecar(fake_gpu, tmp_path):
    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.config import BuildConfig

    trt = fake_gpu()
    plan = build_engine(_onnx(tmp_path), "fp32", tmp_path, BuildConfig(max_batch=8, opt_batch=4))
    assert trt.built[-1]["tf32"] is False
    info = json.loads((tmp_path / f"{plan.stem}.build.json").read_text())
    assert info["tf32"] is False and info["profile"] == {"input": "input", "shape": [1, 3, 4], "min": 1, "opt": 4,
                                                          "max": 8}
    assert info["engine_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert plan.name == "student.fp32.h100-80gb-hbm3-sm90.trt10.3.0.plan"


def test_failed_sidecar_write_leaves_no_engine(fake_gpu, tmp_path):
    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.config import BuildConfig

    fake_gpu()
    plan = build_engine(_onnx(tmp_path), "fp16", tmp_path, BuildConfig())
    sidecar = tmp_path / f"{plan.stem}.build.json"
    sidecar.unlink()
    sidecar.mkdir()  # the next sidecar write fails
    with pytest.raises(OSError):
        build_engine(_onnx(tmp_path), "fp16", tmp_path, BuildConfig())
    assert not plan.exists()  # the old engine is gone too: its sidecar was not this build's


@pytest.mark.parametrize("stale", [b"CACHE:another-gpu", b"garbage, not a cache"])
def test_rejected_timing_cache_falls_back_to_an_empty_one(fake_gpu, tmp_path, capsys, stale):
    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.config import BuildConfig

    trt = fake_gpu()
    (tmp_path / "timing.cache").write_bytes(stale)
    build_engine(_onnx(tmp_path), "fp16", tmp_path, BuildConfig())
    assert trt.built[-1]["cache"].blob == b""  # built with a fresh cache, not the rejected one
    assert (tmp_path / "timing.cache").read_bytes() == b"CACHE:this-gpu"
    assert "starting an empty one" in capsys.readouterr().err


def test_failed_build_writes_nothing(fake_gpu, tmp_path):
    from fdkd.pipeline.build import BuildFailed, build_engine
    from fdkd.pipeline.config import BuildConfig

    fake_gpu(build_fails=True)
    with pytest.raises(BuildFailed, match="failed to build"):
        build_engine(_onnx(tmp_path), "int8", tmp_path, BuildConfig())
    assert not list(tmp_path.glob("*.plan")) and not list(tmp_path.glob("*.build.json"))


def _built(fake_gpu, tmp_path, max_batch=4, **kw):
    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.config import BuildConfig

    fake_gpu(**kw)
    return build_engine(_onnx(tmp_path), "fp16", tmp_path, BuildConfig(max_batch=max_batch, opt_batch=2))


@pytest.mark.parametrize("io_dtype", ["FLOAT", "HALF"])
def test_runtime_runs_batches_beyond_the_profile_in_chunks(fake_gpu, tmp_path, io_dtype):
    plan = _built(fake_gpu, tmp_path, io_dtype=io_dtype)
    rt = load_runtime(plan)
    x = np.random.default_rng(0).standard_normal((10, 1, 3, 4)).astype(np.float32)  # 4 + 4 + 2
    got = rt(x)
    assert got.dtype == np.float32 and got.shape == (10, CLASSES)
    tol = 1e-5 if io_dtype == "FLOAT" else 5e-2
    np.testing.assert_allclose(got, x.reshape(10, FEATURES) @ WEIGHTS, atol=tol, rtol=tol)


def test_runtime_refuses_unsupported_output_dtype_and_bad_shapes(fake_gpu, tmp_path):
    plan = _built(fake_gpu, tmp_path, out_dtype="INT8")
    with pytest.raises(RuntimeError, match="tensor 'logits' is DataType.INT8"):
        load_runtime(plan)
    plan = _built(fake_gpu, tmp_path / "ok")
    rt = load_runtime(plan)
    with pytest.raises(ValueError, match=r"rejected input shape \(2, 1, 4, 4\).*batch 1..4"):
        rt(np.zeros((2, 1, 4, 4), np.float32))


def test_runtime_refuses_a_sidecar_of_another_engine_or_another_jetson(fake_gpu, tmp_path, monkeypatch):
    plan = _built(fake_gpu, tmp_path)
    sidecar = tmp_path / f"{plan.stem}.build.json"
    info = json.loads(sidecar.read_text())
    plan.write_bytes(plan.read_bytes() + b" ")  # an engine rebuilt or swapped under its old sidecar
    with pytest.raises(EngineMismatch, match="does not describe this"):
        load_runtime(plan)
    plan.write_bytes(plan.read_bytes()[:-1])
    sidecar.write_text(json.dumps({**info, "gpu": {**info["gpu"], "jetson": {"model": "NVIDIA Jetson AGX Orin"}}}))
    with pytest.raises(EngineMismatch, match="built for NVIDIA H100 80GB HBM3 .sm 9.0. on NVIDIA Jetson AGX Orin"):
        load_runtime(plan)


def test_engine_command_builds_with_the_runs_build_config(fake_gpu, tmp_path):
    """`fdkd engine` takes the run's build section (profile, workspace, INT8 graph), not BuildConfig()'s defaults."""
    from typer.testing import CliRunner

    from fdkd.pipeline.cli import app

    fake_gpu()
    run = tmp_path / "run"
    run.mkdir()
    build = {"min_batch": 2, "opt_batch": 4, "max_batch": 8, "workspace_mb": 256, "int8_method": "minmax"}
    (run / "manifest.json").write_text(json.dumps({"config": {"build": build}, "artifacts": {}}))
    (run / "student.int8.minmax.onnx").write_bytes(b"minmax graph")
    out = tmp_path / "engines"
    result = CliRunner().invoke(app, ["engine", str(run), "--out", str(out), "--precision", "int8"])
    # built (then the gate refuses: this run has no test set to judge it on)
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "engine" in text and "has no validation.testset.npz" in text, text
    (info,) = [json.loads(p.read_text()) for p in out.glob("*.build.json")]
    assert info["onnx"] == "student.int8.minmax.onnx" and info["workspace_mb"] == 256
    assert info["profile"] | {"input": None, "shape": None} == {"input": None, "shape": None, "min": 2, "opt": 4,
                                                                 "max": 8}
    bad = CliRunner().invoke(app, ["engine", str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 2 and "not a run directory" in " ".join(bad.output.split())


# --- The test doubles are held to TensorRT's real Python signatures (tests/trt_fakes.py: TRT_SIGNATURES) ---


@pytest.mark.parametrize("version,bit", [("10.3.0", 1), ("11.0.0", 0)])
def test_build_makes_a_strongly_typed_network_with_no_precision_flags_on_10_and_11(fake_gpu, tmp_path, version, bit):
    """STRONGLY_TYPED is 1 in TensorRT 10's NvInfer.h and 0 (deprecated, always on) in 11, where the FP16/INT8
    builder flags are gone: the build takes the flag's value from the module and sets no precision flag."""
    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.config import BuildConfig

    trt = fake_gpu(version=version)
    plan = build_engine(_onnx(tmp_path), "int8", tmp_path, BuildConfig())
    assert trt.built[-1]["network_flags"] == 1 << bit and trt.built[-1]["flags"] == set()
    assert json.loads((tmp_path / f"{plan.stem}.build.json").read_text())["strongly_typed"] is True
    precision_flags = {"FP16", "INT8", "BF16"} & set(trt.BuilderFlag.__members__)
    assert precision_flags == ({"FP16", "INT8", "BF16"} if version.startswith("10") else set())


def test_fakes_refuse_calls_the_real_bindings_would_refuse():
    from tests.trt_fakes import TRT_SIGNATURES

    trt = fake_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    with pytest.raises(TypeError, match="missing"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # arity
    with pytest.raises(TypeError, match="no argument named 'size'"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=1 << 20)  # keyword name
    with pytest.raises(TypeError, match="'pool' must be MemoryPoolType"):
        config.set_memory_pool_limit("WORKSPACE", 1 << 20)  # argument type
    with pytest.raises(TypeError, match="'ignore_mismatch' must be bool"):
        config.set_timing_cache(config.create_timing_cache(b""), 0)
    config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, pool_size=1 << 20)  # pybind11 takes keywords
    with pytest.raises(AttributeError):
        config.set_max_workspace_size(1 << 20)  # TensorRT 8's API, gone in 10
    with pytest.raises(AttributeError):
        builder.build_engine(builder.create_network(), config)  # removed in 10: build_serialized_network
    with pytest.raises(RuntimeError, match="name no NetworkDefinitionCreationFlag"):
        builder.create_network(1 << 5)
    engine = trt.Runtime(logger).deserialize_cuda_engine(b'ENGINE:{"max": 4}')
    ctx = engine.create_execution_context()
    with pytest.raises(TypeError, match="'stream_handle' must be int"):
        ctx.execute_async_v3(None)
    with pytest.raises(TypeError, match="'memory' must be int"):
        ctx.set_tensor_address("input", 1.5)
    with pytest.raises(AttributeError):
        ctx.execute_async_v2([0, 0], 0)  # TensorRT 8's bindings API, removed in 10
    assert ("IExecutionContext", "execute_async_v3") in TRT_SIGNATURES


def test_a_fake_member_the_real_bindings_lack_is_refused_at_definition():
    from tests.trt_fakes import _binding

    with pytest.raises(AssertionError, match="fake ICudaEngine.get_binding_index is not in TRT_SIGNATURES"):
        @_binding("ICudaEngine", types={})
        class Engine:
            def get_binding_index(self, name):
                return 0
