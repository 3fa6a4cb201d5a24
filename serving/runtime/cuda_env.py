"""What GPU, driver, CUDA and TensorRT this process sees (cuda-python + tensorrt; no torch).

Used to key engine files and their ``build.json`` sidecars, and by the runtime to refuse an
engine built for another GPU or TensorRT version. Every function answers ``None`` where the
library or the GPU is missing, so callers can say why they skip.
"""

from __future__ import annotations


def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt.__version__


def cudart():
    """cuda-python's runtime module, under its new (cuda.bindings) or old (cuda) name."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def check(result):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info(device: int = 0) -> dict | None:
    """Name, compute capability, driver and CUDA runtime versions, or None without a GPU."""
    try:
        rt = cudart()
        count = check(rt.cudaGetDeviceCount())
    except Exception:  # no cuda-python, no driver, or no device
        return None
    if count < 1:
        return None
    props = check(rt.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
            "driver": check(rt.cudaDriverGetVersion()), "cuda_runtime": check(rt.cudaRuntimeGetVersion())}


def gpu_slug(info: dict) -> str:
    """File-name form of a GPU: 'NVIDIA H100 80GB HBM3' + 9.0 -> 'h100-80gb-hbm3-sm90'."""
    words = [w for w in info["name"].lower().replace("nvidia", "").split() if w]
    return "-".join(words + ["sm" + info["compute_capability"].replace(".", "")])
