"""The base of every objective: the task term (cross-entropy on the student's labels), and ``none``, which is
that term alone.

An objective's ``forward`` returns ``{term_name: (weight, value)}`` (``Terms``): the task term with weight 1 plus
whatever its method's ``terms`` adds; the trainer (``fdkd.pipeline.train``) minimises sum(weight * value).
"""

from __future__ import annotations

import torch
from torch import nn

from fdkd.pipeline.config import DistillConfig
from fdkd.pipeline.losses.pseudo import labelled_cross_entropy

Terms = dict[str, tuple[float, torch.Tensor]]


class Objective(nn.Module):
    """Base: the task term CE(student logits, y), which every method keeps with weight 1.

    ``label_smoothing`` smooths the task term's targets (``distill.label_smoothing``); with
    ``epsilon: teacher`` the stage sets it from the teacher's entropy before training.

    Partly labelled pairs (``y == -1``: ``fdkd.pipeline.data.labels``): the task term is the mean CE over the
    labelled rows of the batch only; every teacher term applies to every row, and a teacher term that needs a
    class (dkd's target class, fd's shared classifiers) takes the teacher's predicted class on an unlabelled row
    (``class_targets``). ``partial_labels`` is set by the trainer when the training split has unlabelled rows.

    Class attributes the trainer reads: ``needs_teacher`` (the frozen teacher's outputs are passed in),
    ``self_teacher`` (the student's own logits on the clean view of the batch, without gradient, are passed in
    as ``z_t``), ``labelled_only`` (the student sees the labelled training rows only, as many steps as the
    others: ``none``, training alone).
    """

    needs_teacher = True
    self_teacher = False
    labelled_only = False

    def __init__(self, d_student: int, d_teacher: int, num_classes: int, cfg: DistillConfig) -> None:
        super().__init__()
        self.cfg = cfg
        eps = cfg.label_smoothing.epsilon
        self.label_smoothing = 0.0 if eps == "teacher" else float(eps)
        self.partial_labels = False

    def terms(self, f_s, z_s, f_t, z_t, y, epoch: int) -> Terms:
        raise NotImplementedError

    def class_targets(self, y: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """The label where there is one, else the teacher's predicted class."""
        return torch.where(y >= 0, y, z_t.argmax(1)) if self.partial_labels else y

    def forward(self, f_s, z_s, f_t, z_t, y, epoch: int = 0) -> Terms:
        task = labelled_cross_entropy(z_s, y, self.label_smoothing, partial=self.partial_labels)
        return {"task": (1.0, task), **self.terms(f_s, z_s, f_t, z_t, y, epoch)}


class NoKD(Objective):
    """none: the student trained alone, L = CE, on the labelled training rows only."""

    needs_teacher = False
    labelled_only = True

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        return {}
