"""Stage ``build``: ONNX (FP32, FP16 or INT8 Q/DQ) -> TensorRT engine on this machine's GPU.

Written for TensorRT 10 (JetPack 6 ships 10.3) and 11: precision comes from the graph (a cast
FP16 graph, explicit Q/DQ for INT8), never from builder flags, which TensorRT 11 removed; the
network is created STRONGLY_TYPED where that flag exists (in 11 it is implied). One
optimization profile over the batch axis (min/opt/max), a workspace limit, a timing cache kept
beside the engines and reused across builds, every ONNX parser error printed. Writes
``student.<precision>.<gpu>.trt<version>.plan`` and its ``.build.json`` sidecar (TensorRT, CUDA
and driver versions, GPU name and compute capability, profile, ONNX sha256).

No TensorRT or no GPU: ``BuildUnavailable`` with the reason (``fdkd build`` exits non-zero;
``fdkd run`` skips the stage and the report says so).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import artifacts
from pipeline.config import BuildConfig
from serving.runtime.cuda_env import gpu_info, gpu_slug, tensorrt_version


class BuildUnavailable(RuntimeError):
    """This machine cannot build TensorRT engines; the message says why."""


class BuildFailed(RuntimeError):
    """TensorRT rejected the graph; the message carries every parser or builder error."""


def availability() -> tuple[str, dict]:
    """(TensorRT version, GPU info), or raise BuildUnavailable naming what is missing."""
    version = tensorrt_version()
    if version is None:
        raise BuildUnavailable("TensorRT is not installed (pip install 'fdkd[gpu]' on a machine with an NVIDIA GPU)")
    gpu = gpu_info()
    if gpu is None:
        raise BuildUnavailable("no CUDA GPU is visible (or cuda-python is missing)")
    return version, gpu


def build_engine(onnx_path: Path, precision: str, out_dir: Path, cfg: BuildConfig) -> Path:
    """Build one engine; returns the plan path (its ``.build.json`` is written beside it)."""
    version, gpu = availability()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildFailed(f"TensorRT's ONNX parser rejected {Path(onnx_path).name}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    inp = network.get_input(0)
    shape = tuple(inp.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (cfg.min_batch, *shape), (cfg.opt_batch, *shape), (cfg.max_batch, *shape))
    config.add_optimization_profile(profile)
    cache_path = out_dir / artifacts.TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildFailed(f"TensorRT failed to build an engine from {Path(onnx_path).name} (see the log above)")
    name = artifacts.ENGINE.format(precision=precision, gpu=gpu_slug(gpu), version=version)
    out = out_dir / name
    with artifacts.atomic_write(out) as f:
        f.write(bytes(plan))
    with artifacts.atomic_write(cache_path) as f:
        f.write(bytes(config.get_timing_cache().serialize()))
    artifacts.write_json(out_dir / artifacts.BUILD_INFO.format(engine_stem=out.stem), {
        "tensorrt": version, "gpu": gpu, "precision": precision, "onnx": Path(onnx_path).name,
        "onnx_sha256": artifacts.sha256_file(onnx_path), "strongly_typed": bool(flags),
        "profile": {"input": inp.name, "min": cfg.min_batch, "opt": cfg.opt_batch, "max": cfg.max_batch},
        "workspace_mb": cfg.workspace_mb,
    })
    return out
