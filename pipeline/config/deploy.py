"""Settings of the stages after distillation, in order: export to ONNX (``export:``, ``fdkd.pipeline.export``),
calibrate and quantize (``quantize:``, ``fdkd.calibration``), build TensorRT engines (``build:``,
``fdkd.pipeline.build``) and validate every artifact against its gates (``validate:``, ``fdkd.pipeline.validate``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fdkd.pipeline.config.base import _Strict


class ExportConfig(_Strict):
    exporter: Literal["dynamo", "torchscript"] = "dynamo"  # torch.onnx.export(dynamo=...), named explicitly
    opset: int = Field(18, ge=17, le=20)
    # max |logit difference| ONNX Runtime vs PyTorch, FP32, per unit of the largest |logit| (at least 1): float
    # rounding grows with the logits' size (a MobileNetV3 with logits near 9 differs by ~1.2e-4 with every graph
    # optimisation off)
    parity_atol: float = Field(1e-4, gt=0)
    parity_batches: tuple[int, ...] = (1, 7, 64)
    # parity runs on the first this many validation rows (read once, in batches): a bounded cost whatever the split
    parity_rows: int = Field(256, ge=1)


CalibMethod = Literal["minmax", "entropy", "percentile"]


class QuantizeConfig(_Strict):
    calib_samples: int = Field(512, ge=10)
    # intermediate outputs a calibrator (and the sensitivity pass) may hold at once; a calibration set whose
    # activations exceed it is collected a stride of batches at a time (fdkd.calibration.quantize)
    calib_activation_mb: float = Field(512, gt=0)
    calib_methods: tuple[CalibMethod, ...] = ("minmax", "entropy", "percentile")
    percentile: float = Field(99.999, gt=90, le=100)
    fp16: bool = True
    fp16_keep_fp32: tuple[str, ...] = ()  # ONNX node names kept in FP32 in the FP16 graph
    exclude: tuple[str, ...] = ()  # ONNX node names kept in float in the INT8 graphs
    sensitivity_top: int = Field(5, ge=1)
    # the INT8 gate search (fdkd.pipeline.int8_search): when the build's INT8 graph or the CPU INT8 graph fails its
    # gate on the validation split, try every calibrator (percentile at ``percentile`` and ``search_percentile``),
    # then keep the layers sensitivity.json ranks worst in float, one more at a time
    search: bool = True
    # the calibrators tried after the plain graph fails ("percentile" at ``percentile``, "percentile2" at
    # ``search_percentile``); [] goes straight to keeping layers in float
    search_calibrators: tuple[Literal["minmax", "entropy", "percentile", "percentile2"], ...] = (
        "minmax", "entropy", "percentile", "percentile2")
    search_percentile: float = Field(99.99, gt=90, le=100)
    search_max_float_frac: float = Field(0.2, ge=0, le=1)  # of the quantized nodes sensitivity.json names
    search_max_passes: int = Field(12, ge=1)  # validation-split passes per graph searched, at most


class BuildConfig(_Strict):
    precisions: tuple[Literal["fp32", "fp16", "int8"], ...] = ("fp16", "int8")
    int8_method: CalibMethod = "entropy"  # which INT8 graph becomes the engine
    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(16, ge=1)
    max_batch: int = Field(64, ge=1)
    workspace_mb: int = Field(1024, ge=16)

    @model_validator(mode="after")
    def _profile(self):
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("build batch profile needs min_batch <= opt_batch <= max_batch")
        return self


class GateConfig(_Strict):
    """Validation gates per precision: an artifact that fails one is not shipped."""

    # max |logit - student.pt's| per unit of student.pt's largest |logit| (at least 1), as export.parity_atol;
    # and top-1 identical to student.pt on every row
    fp32_max_abs_logit: float = Field(1e-4, gt=0)
    fp16_max_acc_drop_pt: float = Field(0.3, ge=0)
    int8_max_acc_drop_pt: float = Field(1.0, ge=0)
    # top-1 agreement with student.pt, percent of test rows (catches flips that cancel in accuracy)
    fp16_min_agree_pct: float = Field(99.0, ge=0, le=100)
    int8_min_agree_pct: float = Field(97.0, ge=0, le=100)
    # an INT8 graph served by ONNX Runtime's CPU kernels (student.int8cpu.onnx, and any INT8 graph's fused mode):
    # the bar `fdkd serve`'s auto must stay within to pick INT8 on the CPU
    int8_cpu_max_acc_drop_pt: float = Field(0.5, ge=0)
    # "paired": a check fails only when its rows show, at one-sided level alpha, that the value is beyond the limit
    # (fdkd.pipeline.gate_stats); "point": the value itself against the limit, whatever the split's size
    decide: Literal["paired", "point"] = "paired"
    alpha: float = Field(0.05, gt=0, lt=0.5)


class ValidateConfig(_Strict):
    gates: GateConfig = GateConfig()
    latency_batch: int = Field(64, ge=1)
    latency_repeats: int = Field(5, ge=1)
    # ONNX Runtime intra-op threads of the runtimes judged (the mode the server must match); None: the
    # top-level ``threads``. Its own key so another count re-validates without retraining.
    threads: int | None = Field(None, ge=1)
