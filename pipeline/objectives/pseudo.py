"""The objectives of ``pseudo`` and ``self-training``: CE to a confident hard label on the unlabelled rows, the
teacher's (``pseudo``) or the student's own on the clean view (``self-training``); settings ``distill.pseudo`` and
``distill.self_training``, loss ``fdkd.pipeline.losses.pseudo``."""

from __future__ import annotations

from fdkd.pipeline.losses.pseudo import pseudo_label_loss
from fdkd.pipeline.objectives.base import Objective


class PseudoLabels(Objective):
    """pseudo: L = CE on the labelled rows + w * CE(z_s, argmax z_t) on the unlabelled rows the teacher is
    confident on (supervision transfer; ``fdkd.pipeline.losses.pseudo``)."""

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.pseudo
        return {"pseudo": (c.weight, pseudo_label_loss(z_s, z_t, y, c.threshold))}


class SelfTraining(Objective):
    """self-training: the same loss as ``pseudo`` with the student's own prediction on the clean clip in the
    teacher's place (FixMatch's weak view; the augmented batch is the strong view). It never sees the teacher."""

    needs_teacher = False
    self_teacher = True

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.self_training
        return {"self": (c.weight, pseudo_label_loss(z_s, z_t, y, c.threshold))}
