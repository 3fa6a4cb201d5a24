"""Per-layer sensitivity of an INT8 Q/DQ graph against its FP32 source (ONNX Runtime's QDQ debugging).

The Q/DQ graph is augmented to output every intermediate tensor and run on the calibration rows; each quantized
activation's error is the signal-to-quantization-noise ratio (SQNR, dB; lower is worse) of its value after Q/DQ
against its value before, over the whole calibration set (ONNX Runtime's ``compute_signal_to_quantization_noice_
ratio``). The worst layers are the candidates for ``quantize.exclude`` (keep them in float).

ONNX Runtime's ``collect_activations`` keeps every intermediate tensor of every batch; here the rows go through
in strides whose float activations fit ``activation_mb`` (``fdkd.calibration.quantize.calibration_stride``), and each
tensor's two norms (signal, noise) are summed over strides. A set that fits is one stride: the numbers are ONNX
Runtime's own.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from fdkd.calibration.quantize import ACTIVATION_MB


def layer_errors(fp32: Path, int8: Path, calib, input_name: str, activation_mb: float = ACTIVATION_MB) -> list[dict]:
    """SQNR per quantized activation, worst first: [{"tensor", "node", "op_type", "sqnr_db"}]. ``calib``: a
    ``CalibrationRows`` or a ``calib.npz`` path holding its inputs (as ``quantize_int8``)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization.qdq_loss_debug import (
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fdkd.calibration.dataset import open_calibration
    from fdkd.calibration.quantize import activation_bytes_per_row, calibration_batch, calibration_stride

    suffix = "_ReshapedSavedOutput"  # onnxruntime.quantization.qdq_loss_debug._TENSOR_SAVE_POSTFIX
    cal = open_calibration(calib, input_name)
    with tempfile.TemporaryDirectory() as tmp:
        pre, aug_q = (str(Path(tmp) / n) for n in ("pre.onnx", "aug_q.onnx"))
        quant_pre_process(str(fp32), pre, skip_symbolic_shape=True)  # the graph quantize_int8 started from
        modify_model_output_intermediate_tensors(str(int8), aug_q)
        # the budget counts the float graph's activations, as quantize_int8's does (the Q/DQ graph's outputs here
        # are about twice those): the same rows per pass as its calibration
        row_bytes = activation_bytes_per_row(Path(pre))
        reader = cal.reader(calibration_batch(row_bytes, activation_mb))
        stride = calibration_stride(len(reader), reader.batch, row_bytes, activation_mb)
        stride = stride or len(reader)
        opts = onnxruntime.SessionOptions()
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # as collect_activations
        session = onnxruntime.InferenceSession(aug_q, sess_options=opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        norms: dict[str, list] = {}  # tensor -> [first stride's norms, strides, sum of squares x2]
        for start in range(0, len(reader), stride):
            reader.set_range(start, start + stride)
            acts: dict[str, list[np.ndarray]] = {}
            for batch in iter(reader.get_next, None):
                for name, value in zip(names, session.run(None, batch), strict=True):
                    if name.endswith(suffix):
                        acts.setdefault(name[: -len(suffix)], []).append(value)
            for tensor, match in create_activation_matching(acts).items():
                left = np.concatenate(match["pre_qdq"]).flatten()
                right = np.concatenate(match["post_qdq"]).flatten()
                # numpy's scalars as ONNX Runtime computes them (float32 for float32 tensors): one stride, its numbers
                part = (np.linalg.norm(left), np.linalg.norm(left - right))
                # running sums, not a list per stride: the bookkeeping must not grow with the calibration rows
                if tensor not in norms:
                    norms[tensor] = [part, 0, 0.0, 0.0]
                acc = norms[tensor]
                acc[1] += 1
                acc[2] += float(part[0]) ** 2
                acc[3] += float(part[1]) ** 2
            del acts
        producers = {o: n for n in onnx.load(pre).graph.node for o in n.output}
    eps = float(np.finfo("float").eps)
    rows = []
    for tensor, (first, strides, signal_sq, noise_sq) in norms.items():
        signal, noise = first if strides == 1 else (math.sqrt(signal_sq), math.sqrt(noise_sq))
        node = producers.get(tensor)
        rows.append({"tensor": tensor, "node": node.name if node else "", "op_type": node.op_type if node else "input",
                     "sqnr_db": float(20 * math.log10(max(signal, eps) / max(noise, eps)))})
    return sorted(rows, key=lambda r: r["sqnr_db"])
