"""The objective of ``kd`` (Hinton logit KD); settings ``distill.kd``, loss ``fdkd.pipeline.losses.kd``."""

from __future__ import annotations

from fdkd.pipeline.losses.kd import kd_loss
from fdkd.pipeline.objectives.base import Objective


class LogitKD(Objective):
    """kd: L = CE + alpha * T^2 * KL(p_t || p_s)."""

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.kd
        return {"kd": (c.alpha, kd_loss(z_s, z_t, c.temperature))}
