"""Settings of the training loop that the teacher and distill stages share: the optimizer schedule
(``OptimConfig``, read by ``fdkd.pipeline.train.fit``) and the devices and processes it runs on (``accel:``,
``AccelConfig``, read by ``fdkd.pipeline.accel``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fdkd.pipeline.config.base import _Strict


class OptimConfig(_Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    final_lr: float = Field(1e-4, ge=0)
    poly_power: float = 0.9
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    # validate, select and ship an exponential moving average of the weights (pipeline/ema.py); None: the weights
    ema_decay: float | None = Field(None, ge=0, lt=1)


class AccelConfig(_Strict):
    """Device and distribution (pipeline/accel.py). ``nproc`` > 1 launches distillation through torchrun."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # CUDA only
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA and x86 CPUs
    compile: bool = False  # torch.compile the student (opt-in)
    band_split: Literal["auto", "matmul", "fft"] = "auto"  # FD band split form; auto: the faster here
    nproc: int = Field(1, ge=1)  # processes on this node for `fdkd distill` (torchrun --nproc-per-node)
    torchrun_args: tuple[str, ...] = ()  # e.g. ["--nnodes=2", "--node-rank=0", "--rdzv-endpoint=host:29500"]

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_switch(cls, v):
        """YAML reads a bare on/off (``--set accel.channels_last=on``) as true/false: take those as "on"/"off"."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v
