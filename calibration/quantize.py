"""FP32 ONNX -> FP16 ONNX and -> INT8 Q/DQ ONNX that TensorRT builds as is.

INT8: ``quant_pre_process`` (shape inference + graph optimisation; without it ONNX Runtime's CPU
INT8 is no faster than FP32), then ``quantize_static`` in QDQ format with signed INT8
activations and weights, **symmetric** on both (every zero point 0: TensorRT supports nothing
else), per-channel weights, and min-max / entropy / percentile calibration. ``exclude`` keeps
named nodes in float.

FP16: ONNX Runtime's ``float16.convert_float_to_float16`` with FP32 inputs and outputs
(``keep_io_types``); nodes that are numerically sensitive in FP16 can be kept in FP32 with
``keep_fp32``.

Calibration memory: ONNX Runtime's histogram calibrators (entropy, percentile) keep every intermediate output of
every calibration batch until the reader is spent, and its ``CalibMaxIntermediateOutputs`` option applies to
min-max only (and in onnxruntime 1.32 it drops the batches it clears without merging their ranges). Where the
calibration set's activations would exceed ``activation_mb`` (estimated from the graph's inferred shapes), the
reader (in batches of at most 32 rows, fewer where one batch would pass the budget) is walked a stride of batches
at a time (ONNX Runtime's ``CalibStridedMinMax``, which calls
``collect_data`` per stride for every calibrator): min-max merges exact ranges, the histogram calibrators merge
each stride into their running histograms, so memory is bounded by one stride, whatever the calibration set's
size. A set that fits is collected in one pass, exactly as before.

Every graph meant for TensorRT (the FP16 graph and the ``target="tensorrt"`` INT8 graphs) passes
the TensorRT lint (``fdkd.onnx_lint``) before it is written under its final name, or
``QuantizeError`` names each offending node. The CPU INT8 variant is not for TensorRT (its
asymmetric uint8 activations are what the lint forbids) and is not linted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

# intermediate outputs a calibrator may hold at once (quantize.calib_activation_mb): the built-in main job's 512
# calibration rows (about 370 MB of activations) still calibrate in one pass, as before
ACTIVATION_MB = 512
BATCH = 32  # calibration rows per ONNX Runtime call, fewer where one batch's activations would pass the budget
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class QuantizeError(RuntimeError):
    """A converted graph is not fit for TensorRT; the message names the graph and each offending node."""


def check_tensorrt_lint(model, name: str) -> None:
    """Raise ``QuantizeError`` if ``model`` (an ``onnx.ModelProto``) fails the TensorRT lint."""
    from fdkd.onnx_lint import lint_model

    issues = lint_model(model)
    if issues:
        raise QuantizeError(f"{name} fails the TensorRT lint:\n  " + "\n  ".join(map(str, issues)))


def activation_bytes_per_row(model_path: Path) -> int | None:
    """Bytes of every float intermediate tensor for one input row (the batch axis excluded), from ONNX shape
    inference; None when a tensor's shape is not known (the caller then collects one batch at a time)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    total = 0
    for vi in [*model.graph.value_info, *model.graph.output]:
        t = vi.type.tensor_type
        if t.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        dims = list(t.shape.dim)
        if not dims or any(not d.HasField("dim_value") for d in dims[1:]):
            return None
        total += int(np.prod([d.dim_value for d in dims[1:]])) * 4
    return total


def calibration_batch(row_bytes: int | None, activation_mb: float) -> int:
    """Rows per calibration batch: ``BATCH``, fewer where a batch's activations would pass ``activation_mb``."""
    if row_bytes is None or BATCH * row_bytes <= activation_mb * 2**20:
        return BATCH
    return max(1, int(activation_mb * 2**20 // row_bytes))


def calibration_stride(n_batches: int, batch: int, row_bytes: int | None, activation_mb: float) -> int | None:
    """Batches per ``collect_data`` call so that a stride's activations stay within ``activation_mb``: None where
    the whole set fits (one pass, ONNX Runtime's default), else the largest divisor of ``n_batches`` that fits
    (``CalibStridedMinMax`` needs one), at least 1."""
    if row_bytes is not None and n_batches * batch * row_bytes <= activation_mb * 2**20:
        return None
    fit = 1 if row_bytes is None else max(1, int(activation_mb * 2**20 // max(batch * row_bytes, 1)))
    return next(s for s in range(min(fit, n_batches), 0, -1) if n_batches % s == 0)


def quantize_int8(fp32: Path, out: Path, calib, input_name: str, method: str = "minmax", *,
                  exclude: tuple[str, ...] = (), percentile: float = 99.999, target: str = "tensorrt",
                  metadata: dict | None = None, activation_mb: float = ACTIVATION_MB) -> None:
    """Write an explicitly quantized (QuantizeLinear/DequantizeLinear) INT8 graph to ``out``.

    ``target="tensorrt"``: signed INT8 activations and weights, symmetric (zero points 0).
    ``target="cpu"``: unsigned asymmetric activations with reduced-range weights, the variant ONNX
    Runtime's CPU kernels compute without saturation on machines without VNNI; not TensorRT-legal.
    ``metadata``: more ``metadata_props`` (the gate search records its calibration and float layers there).
    ``calib``: a ``fdkd.calibration.dataset.CalibrationRows`` (the rows read from the dataset once per stage) or the
    path of a ``calib.npz`` that holds its inputs. ``activation_mb``: see the module's docstring.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fdkd import artifacts
    from fdkd.calibration.dataset import open_calibration

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(CALIBRATION_METHODS)}")
    if target not in ("tensorrt", "cpu"):
        raise ValueError(f"unknown INT8 target {target!r}; expected 'tensorrt' or 'cpu'")
    trt = target == "tensorrt"
    # TensorRT takes biases in float: quantizing them to INT32 Q/DQ would not parse.
    extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        q = Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        row_bytes = activation_bytes_per_row(pre)
        reader = open_calibration(calib, input_name).reader(calibration_batch(row_bytes, activation_mb))
        stride = calibration_stride(len(reader), reader.batch, row_bytes, activation_mb)
        if stride is not None:
            extra["CalibStridedMinMax"] = stride
        quantize_static(str(pre), str(q), reader,
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, reduce_range=not trt,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                        nodes_to_exclude=list(exclude), extra_options=extra)
        _copy_metadata(fp32, q, {"fdkd.precision": "int8", "fdkd.calibration": method, "fdkd.target": target}
                       | (metadata or {}))
        if trt:
            import onnx

            check_tensorrt_lint(onnx.load(str(q)), out.name)
        with artifacts.atomic_write(out) as f:
            f.write(q.read_bytes())


def convert_fp16(fp32: Path, out: Path, keep_fp32: tuple[str, ...] = ()) -> None:
    """Write an FP16 graph with FP32 inputs and outputs to ``out``."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from fdkd import artifacts

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, node_block_list=list(keep_fp32))
    OnnxModel(model).topological_sort()  # the converter appends its I/O casts at the end of the node list
    _set_metadata(model, {"fdkd.precision": "fp16"})
    onnx.checker.check_model(model)
    check_tensorrt_lint(model, out.name)
    with artifacts.atomic_write(out) as f:
        f.write(model.SerializeToString())


def _set_metadata(model, extra: dict) -> None:
    meta = {p.key: p.value for p in model.metadata_props} | extra
    del model.metadata_props[:]
    for k, v in sorted(meta.items()):
        model.metadata_props.add(key=k, value=v)


def _copy_metadata(src: Path, dst: Path, extra: dict) -> None:
    """quantize_static drops metadata_props; carry the FP32 graph's over (class names, preprocessing)."""
    import onnx

    model = onnx.load(str(dst))
    src_meta = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    _set_metadata(model, src_meta | {p.key: p.value for p in model.metadata_props} | extra)
    onnx.save(model, str(dst))


def zero_points(path: Path) -> dict[str, list[int]]:
    """Every Q/DQ node's zero point values, by node name (for the symmetry check)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: inits[n.input[2]].reshape(-1).tolist() for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits}
