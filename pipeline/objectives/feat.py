"""The objective of ``feat`` (FitNet-style feature MSE through a projector); settings ``distill.feat``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from fdkd.pipeline.objectives.base import Objective


class FeatureMSE(Objective):
    """feat: FitNet-style L = CE + beta * MSE(proj(f_s), sg[f_t])."""

    def __init__(self, d_student, d_teacher, num_classes, cfg):
        super().__init__(d_student, d_teacher, num_classes, cfg)
        self.projector = nn.Linear(d_student, d_teacher) if d_student != d_teacher else nn.Identity()

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        return {"feat": (self.cfg.feat.beta, F.mse_loss(self.projector(f_s), f_t.detach()))}
