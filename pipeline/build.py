"""Stage ``build``: ONNX (FP32, FP16 or INT8 Q/DQ) -> TensorRT engine on this machine's GPU.

Written for TensorRT 10 (JetPack 6.1/6.2 ship 10.3) and 11: precision comes from the graph (a
cast FP16 graph, explicit Q/DQ for INT8), never from builder flags, which TensorRT 11 removed;
the network is created STRONGLY_TYPED where that flag exists (in 11 it is implied). TF32 is
cleared: it is on by default, strongly typed networks included, and would run the graph's float32
math with 10-bit mantissas on Ampere and later (the FP32 gate is 1e-4). One optimization profile
over the batch axis (min/opt/max), a workspace limit, every ONNX parser error printed.

A timing cache is kept beside the engines and reused; one that TensorRT rejects (another
TensorRT version or GPU, a truncated file) is reported and replaced by an empty cache, never a
failed build. Writes, in this order, the timing cache, the ``.build.json`` sidecar (TensorRT,
CUDA and driver versions, GPU and Jetson module, profile, the ONNX's and the engine's sha256),
and the engine ``student.<precision>.<gpu>.trt<version>.plan`` last, each atomically, after
removing any older engine of that name: a failed build never leaves an engine without its sidecar.

No TensorRT or no GPU: ``BuildUnavailable`` with the reason (``fdkd build`` exits non-zero;
``fdkd run`` skips the stage and the report says so).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fdkd import artifacts
from fdkd.pipeline.config import BuildConfig
from fdkd.serving.runtime.cuda_env import gpu_slug, gpu_status, tensorrt_version


class BuildUnavailable(RuntimeError):
    """This machine cannot build TensorRT engines; the message says why."""


class BuildFailed(RuntimeError):
    """TensorRT rejected the graph; the message carries every parser or builder error."""


def availability() -> tuple[str, dict]:
    """(TensorRT version, GPU info), or raise BuildUnavailable naming what is missing."""
    version = tensorrt_version()
    if version is None:
        raise BuildUnavailable("TensorRT is not installed (pip install 'fdkd[gpu]' on a machine with an NVIDIA GPU)")
    gpu, why = gpu_status()
    if gpu is None:
        raise BuildUnavailable(f"TensorRT {version} is installed but no CUDA GPU is usable: {why}")
    return version, gpu


def _warn(msg: str) -> None:
    from fdkd.pipeline.progress import console

    console.print(f"warning: {msg}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def attach_timing_cache(config, cache_path: Path, log=_warn):
    """Load the timing cache at ``cache_path`` into ``config``; a rejected one is replaced by an empty cache.

    ``create_timing_cache`` answers None for bytes it cannot parse and ``set_timing_cache`` False
    for a cache from another TensorRT or device (ignore_mismatch=False: a foreign cache's timings
    would mislead tactic choice). Returns the attached cache, which the build then extends.
    """
    blob = b""
    if cache_path.exists():
        try:
            blob = cache_path.read_bytes()
        except OSError as e:
            log(f"timing cache {cache_path} unreadable ({e}); starting an empty one")
    if blob:
        problem = "could not be parsed (truncated?)"
        try:
            cache = config.create_timing_cache(blob)
        except Exception as e:  # the bindings raise on some malformed buffers
            cache, problem = None, f"could not be parsed ({type(e).__name__}: {e})"
        if cache is not None and config.set_timing_cache(cache, False):
            return cache
        if cache is not None:
            problem = "was rejected (another TensorRT version or GPU)"
        log(f"timing cache {cache_path.name} {problem}; starting an empty one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise BuildFailed("TensorRT refused even an empty timing cache")
    return cache


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
    config.clear_flag(trt.BuilderFlag.TF32)  # on by default: float32 math would round to 10-bit mantissas
    if config.get_flag(trt.BuilderFlag.TF32):
        raise BuildFailed("TensorRT kept TF32 enabled; the FP32 gate (1e-4) cannot hold")
    inp = network.get_input(0)
    shape = tuple(inp.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (cfg.min_batch, *shape), (cfg.opt_batch, *shape), (cfg.max_batch, *shape))
    config.add_optimization_profile(profile)
    cache_path = out_dir / artifacts.TIMING_CACHE
    attach_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildFailed(f"TensorRT failed to build an engine from {Path(onnx_path).name} (see the log above)")
    plan = bytes(plan)
    name = artifacts.ENGINE.format(precision=precision, gpu=gpu_slug(gpu), version=version)
    out = out_dir / name
    out.unlink(missing_ok=True)  # from here on, no engine of this name until its sidecar is written
    with artifacts.atomic_write(cache_path) as f:
        f.write(bytes(config.get_timing_cache().serialize()))
    artifacts.write_json(out_dir / artifacts.BUILD_INFO.format(engine_stem=out.stem), {
        "tensorrt": version, "gpu": gpu, "precision": precision, "onnx": Path(onnx_path).name,
        "onnx_sha256": artifacts.sha256_file(onnx_path), "engine_sha256": hashlib.sha256(plan).hexdigest(),
        "strongly_typed": bool(flags), "tf32": False,
        "profile": {"input": inp.name, "shape": list(shape), "min": cfg.min_batch, "opt": cfg.opt_batch,
                    "max": cfg.max_batch},
        "workspace_mb": cfg.workspace_mb,
    })
    with artifacts.atomic_write(out) as f:  # last: an engine on disk always has its sidecar
        f.write(plan)
    return out
