"""Settings of the models: an encoder's architecture (``ModelConfig``, the teacher's and the student's) and the
teacher stage (``teacher:``, read by ``fdkd.pipeline.teacher``): what it trains, or which checkpoint it loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from fdkd.pipeline.config.base import Modality, _Strict
from fdkd.pipeline.config.train import OptimConfig


class ModelConfig(_Strict):
    """An encoder: ``conv`` (built in) or ``timm:<name>`` (needs the [timm] extra)."""

    arch: str = "conv"
    width: int = Field(16, ge=1)
    depth: int = Field(2, ge=1, le=6)
    # conv only: "auto" halves inputs whose short side is >= 32 (spectrograms) before the first block
    stem_stride: int | Literal["auto"] = "auto"

    def resolved_stem_stride(self, input_shape: tuple[int, ...]) -> int:
        if self.stem_stride == "auto":
            return 2 if min(input_shape[-2:]) >= 32 else 1
        return self.stem_stride

    @field_validator("stem_stride")
    @classmethod
    def _stride(cls, v):
        if v != "auto" and not 1 <= v <= 4:
            raise ValueError(f"stem_stride must be 1..4 or 'auto', got {v}")
        return v

    @field_validator("arch")
    @classmethod
    def _arch(cls, v):
        if v != "conv" and not v.startswith("timm:"):
            raise ValueError(f"arch must be 'conv' or 'timm:<name>', got {v!r}")
        return v


class TeacherConfig(_Strict):
    modality: Modality = "image"
    model: ModelConfig = ModelConfig(width=64, depth=3)
    optim: OptimConfig = OptimConfig(epochs=15)
    checkpoint: Path | None = None  # load instead of training: fdkd checkpoint or TorchScript
    checkpoint_arch: ModelConfig | None = None  # for a bare state dict: the architecture it fits
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # of the teacher's cross-entropy targets (fine-tuning)
