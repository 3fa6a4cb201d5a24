"""Per-layer sensitivity of an INT8 Q/DQ graph against its FP32 source (ONNX Runtime's QDQ debugging).

Both graphs are augmented to output every intermediate tensor, run on the calibration data, and
matched tensor by tensor; the error is the signal-to-quantization-noise ratio (SQNR, dB; lower
is worse) of the Q/DQ graph's activation against the float one. The worst layers are the
candidates for ``quantize.exclude`` (keep them in float).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def layer_errors(fp32: Path, int8: Path, calib: Path, input_name: str) -> list[dict]:
    """SQNR per quantized activation, worst first: [{"tensor", "node", "op_type", "sqnr_db"}]."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fdkd.calibration.dataset import NpzCalibrationReader

    with tempfile.TemporaryDirectory() as tmp:
        pre, aug_f, aug_q = (str(Path(tmp) / n) for n in ("pre.onnx", "aug_f.onnx", "aug_q.onnx"))
        quant_pre_process(str(fp32), pre, skip_symbolic_shape=True)  # the graph quantize_int8 started from
        modify_model_output_intermediate_tensors(pre, aug_f)
        modify_model_output_intermediate_tensors(str(int8), aug_q)
        reader = NpzCalibrationReader(calib, input_name)
        float_acts = collect_activations(aug_f, reader)
        reader.rewind()
        qdq_acts = collect_activations(aug_q, reader)
        errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
        producers = {o: n for n in onnx.load(pre).graph.node for o in n.output}
    rows = []
    for tensor, err in errors.items():
        node = producers.get(tensor)
        rows.append({"tensor": tensor, "node": node.name if node else "", "op_type": node.op_type if node else "input",
                     "sqnr_db": float(err["qdq_err"])})
    return sorted(rows, key=lambda r: r["sqnr_db"])
