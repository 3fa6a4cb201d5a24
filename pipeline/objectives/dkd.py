"""The objective of ``dkd`` (decoupled KD, with its warm-up); settings ``distill.dkd``, loss
``fdkd.pipeline.losses.dkd``."""

from __future__ import annotations

from fdkd.pipeline.losses.dkd import dkd_loss
from fdkd.pipeline.objectives.base import Objective


class DecoupledKD(Objective):
    """dkd: L = CE + warmup(epoch) * (alpha * TCKD + beta * NCKD)."""

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.dkd
        ramp = min((epoch + 1) / c.warmup_epochs, 1.0) if c.warmup_epochs else 1.0
        return {"dkd": (ramp, dkd_loss(z_s, z_t, self.class_targets(y, z_t), c.alpha, c.beta, c.temperature))}
