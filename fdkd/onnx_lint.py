"""Lint an ONNX graph for TensorRT's ONNX parser before any GPU sees it.

Checks, each reported with the offending node's name: every op is in TensorRT's ONNX operator
support list (``TENSORRT_OPS``, TensorRT 10.x; DFT/STFT are absent, since TensorRT < 11.2 and
every Jetson on JetPack 6 cannot parse them), only the default ONNX domain is used, the opset is
in range, only the batch axis is dynamic, and Q/DQ pairs are TensorRT-legal (signed INT8,
zero point 0; a QuantizeLinear without a zero-point input quantizes to uint8, so it is an error).

The pipeline lints every graph meant for TensorRT: the FP32 export, the FP16 graph and each INT8
Q/DQ graph (``fdkd.calibration.quantize``); a graph with issues is never written under its final name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPSET_RANGE = (17, 20)

# From onnx-tensorrt's operators.md for TensorRT 10 (ops a student CNN could plausibly contain).
TENSORRT_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization GRU HardSigmoid HardSwish Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization
LpPool LRN LSTM MatMul Max MaxPool Mean Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
RNN Round ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split()  # noqa: SIM905 (a word list is easier to diff against the upstream table)
)


@dataclass(frozen=True)
class LintIssue:
    node: str
    op_type: str
    message: str

    def __str__(self) -> str:
        return f"{self.node or '<graph>'} ({self.op_type}): {self.message}" if self.op_type else self.message


def lint_model(model) -> list[LintIssue]:
    """All TensorRT-compatibility problems of an ``onnx.ModelProto`` (empty list: clean)."""
    from onnx import numpy_helper

    issues: list[LintIssue] = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    if version is None or not OPSET_RANGE[0] <= version <= OPSET_RANGE[1]:
        issues.append(LintIssue("", "", f"opset {version} outside {OPSET_RANGE[0]}..{OPSET_RANGE[1]}"))
    inits = {t.name: t for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i > 0 and (d.dim_param or d.dim_value <= 0):
                issues.append(LintIssue(inp.name, "", f"input {inp.name!r} axis {i} is dynamic; only batch may be"))
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            msg = f"custom domain {node.domain!r}: TensorRT cannot parse it"
            issues.append(LintIssue(node.name, node.op_type, msg))
        elif node.op_type not in TENSORRT_OPS:
            issues.append(LintIssue(node.name, node.op_type, "op not in TensorRT's ONNX operator support list"))
        if node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2]):
            issues.append(LintIssue(node.name, node.op_type, "no zero-point input: the output is uint8; "
                                    "TensorRT needs an int8 zero point of 0"))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) >= 3 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is None:
                issues.append(LintIssue(node.name, node.op_type, "zero point is not a constant initializer"))
                continue
            arr = numpy_helper.to_array(zp)
            if arr.dtype != np.int8:
                issues.append(LintIssue(node.name, node.op_type, f"zero point dtype {arr.dtype}; TensorRT needs int8"))
            if np.any(arr != 0):
                issues.append(LintIssue(node.name, node.op_type, "non-zero zero point; TensorRT INT8 is symmetric"))
    return issues


def lint_file(path: Path) -> list[LintIssue]:
    import onnx

    return lint_model(onnx.load(str(path)))
