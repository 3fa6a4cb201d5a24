"""The objective of ``dist`` (DIST's Pearson relations); settings ``distill.dist``, loss
``fdkd.pipeline.losses.dist``."""

from __future__ import annotations

from fdkd.pipeline.losses.dist import dist_loss
from fdkd.pipeline.objectives.base import Objective


class DIST(Objective):
    """dist: L = CE + T^2 (beta * inter + gamma * intra)."""

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.dist
        return {"dist": (1.0, dist_loss(z_s, z_t, c.beta, c.gamma, c.temperature))}
