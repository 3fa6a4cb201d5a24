"""Settings of the training loop that the teacher and distill stages share: the optimizer, its schedule and when
training stops (``OptimConfig``, read by ``fdkd.pipeline.train.fit``), the devices and processes it runs on
(``accel:``, ``AccelConfig``, read by ``fdkd.pipeline.accel``) and the experiment trackers it reports to
(``tracking:``, ``TrackingConfig``, read by ``fdkd.pipeline.tracking``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

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
    # ---- the recipe (new fields go last: the field order is the dumped YAML's and the stage keys') ----
    name: Literal["sgd", "adamw"] = "sgd"  # sgd: momentum + weight_decay (L2); adamw: betas + decoupled weight_decay
    betas: tuple[float, float] = (0.9, 0.999)  # adamw only
    schedule: Literal["poly", "cosine"] = "poly"  # lr -> final_lr over the planned steps (after the warmup)
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup from lr/warmup_steps to lr (fine-tuning: 1 or more)
    clip_grad_norm: float | None = Field(None, gt=0)  # clip each student's (and its objective's) gradient norm
    grad_accum_steps: int = Field(1, ge=1)  # batches per optimizer step (effective batch = batch_size x this)
    # when training stops: "epochs" runs `epochs`; "early" plans min(max_epochs, the epochs max_steps optimizer steps
    # take) and stops once no student's validation accuracy rose in `patience` epochs (none: the budget only), never
    # before min_epochs; "auto": early on a manifest (a user's data), epochs on the built-in presets (whose fixed
    # epochs are tuned to the main job's 5 minutes)
    stop: Literal["auto", "epochs", "early"] = "auto"
    patience: int | None = Field(10, ge=1)
    min_epochs: int = Field(10, ge=1)
    max_epochs: int = Field(300, ge=1)
    max_steps: int | None = Field(3000, ge=1)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must both be in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.final_lr > self.lr:
            raise ValueError(f"final_lr ({self.final_lr}) must not exceed lr ({self.lr}): the schedule decays")
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) exceeds max_epochs ({self.max_epochs})")
        if self.stop == "epochs" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})")
        if self.stop == "early" and self.warmup_epochs >= self.min_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than min_epochs "
                             f"({self.min_epochs}): early stopping could end training inside the warmup")
        return self

    def early(self, manifest: bool) -> bool:
        """Whether this budget stops early: ``stop``, with "auto" resolved by the data source."""
        return self.stop == "early" or (self.stop == "auto" and manifest)


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


class TrackingConfig(_Strict):
    """Experiment trackers beside ``metrics.jsonl`` (which stays the source of truth): ``fdkd.pipeline.tracking``.

    ``tensorboard``: event files under ``<run>/tensorboard/<stage>`` from every training stage (the [tensorboard]
    extra); "auto" writes them when the package is installed, "on" makes its absence an error. ``mlflow``: one
    MLflow run per ``fdkd run`` (resolved config as params, per-epoch metrics, report.md and validation.json as
    artifacts); "auto" logs when mlflow is installed and ``MLFLOW_TRACKING_URI`` is set.
    """

    tensorboard: Literal["auto", "on", "off"] = "auto"
    mlflow: Literal["auto", "on", "off"] = "auto"
    mlflow_experiment: str = "fdkd"

    @field_validator("tensorboard", "mlflow", mode="before")
    @classmethod
    def _yaml_switch(cls, v):
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v
