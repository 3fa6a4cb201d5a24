"""Settings of the models: an encoder's architecture (``ModelConfig``, the teacher's and the student's) and the
teacher stage (``teacher:``, read by ``fdkd.pipeline.teacher``): what it trains, or which checkpoint it loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fdkd.pipeline.config.base import Modality, _Strict
from fdkd.pipeline.config.train import OptimConfig


class ModelConfig(_Strict):
    """An encoder: ``conv`` (built in), ``timm:<name>`` or ``torchvision:<name>`` (the [timm] extra; timm pulls
    torchvision). ``width``/``depth``/``stem_stride`` shape ``conv`` only.

    ``init``: a local weight file (``.pth``/``.pt``/``.safetensors``: a timm or torchvision state dict, or an
    fdkd checkpoint) loaded strictly into the backbone before training (``fdkd.pipeline.models.init``); only
    ``teacher.model`` and ``distill.student`` read it. A classifier whose shape differs from the data's classes is
    replaced; any other mismatch is an error. Nothing is ever downloaded: ``pretrained: true`` says the weights
    are pretrained and needs ``init``.

    ``norm``: the encoder's own input normalisation. ``dataset``: fdkd's standardisation (the training split's
    mean/std) as every built-in model sees it; ``model``: the architecture's pretrained per-channel mean/std
    (timm's ``pretrained_cfg``, ImageNet's for torchvision), baked into the model as one affine map so the
    served preprocessing stays the dataset's; ``auto``: ``model`` for an image encoder with ``init``, else
    ``dataset``. ``mean``/``std`` (per channel, on pixels scaled to [0, 1]) override both.

    ``tap_module``: a module name (e.g. ``layer4``, ``blocks.5``) whose pooled output is the feature the
    objectives compare when ``distill.feature_tap`` is ``pre`` (a forward hook; ecosystem encoders only).
    """

    arch: str = "conv"
    width: int = Field(16, ge=1)
    depth: int = Field(2, ge=1, le=6)
    # conv only: "auto" halves inputs whose short side is >= 32 (spectrograms) before the first block
    stem_stride: int | Literal["auto"] = "auto"
    init: Path | None = None
    pretrained: bool = False
    norm: Literal["auto", "dataset", "model"] = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    tap_module: str | None = None

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
        prefix, _, name = v.partition(":")
        if v != "conv" and not (prefix in ("timm", "torchvision") and name):
            raise ValueError(f"arch must be 'conv', 'timm:<name>' or 'torchvision:<name>', got {v!r}")
        return v

    @model_validator(mode="after")
    def _weights(self):
        if self.pretrained and self.init is None:
            raise ValueError("pretrained: true needs init: PATH, a local weight file (.pth/.pt/.safetensors); "
                             "fdkd never downloads weights")
        if self.init is not None and self.init.suffix not in INIT_SUFFIXES:
            raise ValueError(f"init {self.init}: expected one of {', '.join(INIT_SUFFIXES)}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: set both or neither")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.arch == "conv" and (self.tap_module or self.mean is not None or self.norm == "model"):
            raise ValueError("tap_module, mean/std and norm: model apply to timm:/torchvision: encoders; the "
                             "conv encoder reads fdkd's standardised input and taps with distill.feature_tap")
        return self


INIT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
# With teacher.model.init the teacher fine-tunes: unless teacher.optim sets them, a tenth of the from-scratch
# learning rate and one epoch of linear warmup (teacher.optim.warmup_epochs, fdkd.pipeline.train), so the first
# steps do not wash out the pretrained features
FINETUNE_LR = 0.005
FINETUNE_WARMUP_EPOCHS = 1.0


class TeacherConfig(_Strict):
    modality: Modality = "image"
    model: ModelConfig = ModelConfig(width=64, depth=3)
    optim: OptimConfig = OptimConfig(epochs=15)
    checkpoint: Path | None = None  # load instead of training: fdkd checkpoint or TorchScript
    checkpoint_arch: ModelConfig | None = None  # for a bare state dict: the architecture it fits
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # of the teacher's cross-entropy targets (fine-tuning)

    @model_validator(mode="before")
    @classmethod
    def _finetune_lr(cls, data):
        """``model.init`` set: the fine-tuning defaults for what ``optim`` leaves unset (``FINETUNE_LR``,
        ``FINETUNE_WARMUP_EPOCHS``)."""
        if isinstance(data, dict):
            model, optim = data.get("model"), data.get("optim")
            init = model.get("init") if isinstance(model, dict) else getattr(model, "init", None)
            if init is not None and (optim is None or isinstance(optim, dict)):
                given = optim or {}
                merged = {**(OptimConfig(epochs=15).model_dump() if optim is None else {}), **given}
                if "lr" not in given:
                    merged["lr"] = FINETUNE_LR
                # a one-epoch linear warmup where the budget leaves room for it (shorter than epochs and min_epochs)
                if "warmup_epochs" not in given and min(merged.get("epochs", 20), merged.get("min_epochs", 10)) > 1:
                    merged["warmup_epochs"] = FINETUNE_WARMUP_EPOCHS
                data = {**data, "optim": merged}
        return data

    @model_validator(mode="after")
    def _checkpoint_arch(self):
        if self.checkpoint_arch is not None and self.checkpoint_arch.init is not None:
            raise ValueError("teacher.checkpoint_arch.init: the weights are teacher.checkpoint; init belongs on "
                             "teacher.model (fine-tuned) or distill.student")
        return self
