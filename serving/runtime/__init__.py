"""Runtimes that execute a student artifact: ONNX Runtime (default, CPU or CUDA) and TensorRT engines.

``RUNTIMES`` maps an artifact's file suffix to its runtime class; ``load_runtime`` picks one.
Every runtime takes float32 [N, ...] inputs and returns float32 logits [N, classes]. Validation
uses these same classes, so what is validated is exactly what is served.
"""

from __future__ import annotations

from pathlib import Path


def _onnx(path, **kw):
    from fdkd.serving.runtime.onnx import OnnxRuntime

    return OnnxRuntime(path, **kw)


def _tensorrt(path, **kw):
    from fdkd.serving.runtime.tensorrt import TensorRTRuntime

    return TensorRTRuntime(path, **kw)


RUNTIMES = {".onnx": _onnx, ".plan": _tensorrt}


def load_runtime(path: Path, **kwargs):
    """Open ``path`` with the runtime for its suffix (``.onnx`` or ``.plan``)."""
    path = Path(path)
    if path.suffix not in RUNTIMES:
        raise ValueError(f"no runtime for {path.name}: expected one of {sorted(RUNTIMES)}")
    return RUNTIMES[path.suffix](path, **kwargs)
