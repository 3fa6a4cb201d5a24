"""Distillation objectives: each method is a visible weighted sum of named loss terms.

An objective is an ``nn.Module`` (it may own training-only parameters: projector, shared
classifiers, band heads; none of them ships) whose ``forward`` returns
``{term_name: (weight, value)}``; the trainer minimises sum(weight * value) and logs every term
by name. ``METHODS`` is the one table from ``distill.method`` to a class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fdkd.pipeline.config import DistillConfig
from fdkd.pipeline.losses.dist import dist_loss
from fdkd.pipeline.losses.dkd import dkd_loss
from fdkd.pipeline.losses.frequency import (
    band_projectors,
    band_split_fft,
    default_cut,
    fastest_band_split,
    high_band_loss,
    low_band_loss,
)
from fdkd.pipeline.losses.kd import kd_loss
from fdkd.pipeline.losses.pseudo import labelled_cross_entropy, pseudo_label_loss

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


class LogitKD(Objective):
    """kd: L = CE + alpha * T^2 * KL(p_t || p_s)."""

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.kd
        return {"kd": (c.alpha, kd_loss(z_s, z_t, c.temperature))}


class FeatureMSE(Objective):
    """feat: FitNet-style L = CE + beta * MSE(proj(f_s), sg[f_t])."""

    def __init__(self, d_student, d_teacher, num_classes, cfg):
        super().__init__(d_student, d_teacher, num_classes, cfg)
        self.projector = nn.Linear(d_student, d_teacher) if d_student != d_teacher else nn.Identity()

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        return {"feat": (self.cfg.feat.beta, F.mse_loss(self.projector(f_s), f_t.detach()))}


class DecoupledKD(Objective):
    """dkd: L = CE + warmup(epoch) * (alpha * TCKD + beta * NCKD)."""

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.dkd
        ramp = min((epoch + 1) / c.warmup_epochs, 1.0) if c.warmup_epochs else 1.0
        return {"dkd": (ramp, dkd_loss(z_s, z_t, self.class_targets(y, z_t), c.alpha, c.beta, c.temperature))}


class DIST(Objective):
    """dist: L = CE + T^2 (beta * inter + gamma * intra)."""

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.dist
        return {"dist": (1.0, dist_loss(z_s, z_t, c.beta, c.gamma, c.temperature))}


class FDCMKD(Objective):
    """fd: FD-CMKD (METHOD.md). L = CE + w_align L_align + w_low L_low + w_high L_high [+ w_bh L_band_heads].

    L_align = CE(Phi_low(s_low), y) + CE(Phi_low(t_low), y) + CE(Phi_high(s_high), y) + CE(Phi_high(t_high), y)
    with Phi = Linear(ReLU(.)) shared by teacher and student band features (un-normalised).
    The student is projected to the teacher's width first when the widths differ.
    Ablations: ``band_split=False`` gives both bands the whole DC-free feature; ``shared_classifier``
    off drops L_align; ``log_mse=False`` uses plain MSE on the high band.
    """

    def __init__(self, d_student, d_teacher, num_classes, cfg):
        super().__init__(d_student, d_teacher, num_classes, cfg)
        c = cfg.fd
        self.projector = nn.Linear(d_student, d_teacher) if d_student != d_teacher else nn.Identity()
        cut = default_cut(d_teacher) if c.cut is None else c.cut
        self.cut, self.split_form = cut, "matmul"
        p_low, p_high = band_projectors(d_teacher, cut)
        if not c.band_split:  # one band holding every non-DC bin, for both terms
            p_low = p_high = p_low + p_high
        self.register_buffer("p_low", p_low, persistent=False)
        self.register_buffer("p_high", p_high, persistent=False)
        self.cls_low = nn.Sequential(nn.ReLU(), nn.Linear(d_teacher, num_classes))
        self.cls_high = nn.Sequential(nn.ReLU(), nn.Linear(d_teacher, num_classes))
        if c.band_heads:
            self.head_low = nn.Linear(d_teacher, num_classes)
            self.head_high = nn.Linear(d_teacher, num_classes)

    def use_band_split(self, form: str, device) -> str:
        """Choose the band split's form: "matmul", "fft", or "auto" (the faster on ``device``)."""
        if not self.cfg.fd.band_split:
            form = "matmul"  # the ablation's single band is a projector, not an FFT mask
        elif form == "auto":
            # CPU: always the matmul: a fixed choice keeps CPU runs byte-reproducible, and at the
            # default D=256 the two forms are within ~10% here (FFT wins from D~512, see
            # docs/results.md). Accelerators: whichever form is faster, timed once per run.
            cpu = torch.device(device).type == "cpu"
            form = "matmul" if cpu else fastest_band_split(self.p_low.shape[0], self.cut, device,
                                                              batch=self.cfg.optim.batch_size)
        self.split_form = form
        return form

    def terms(self, f_s, z_s, f_t, z_t, y, epoch):
        c = self.cfg.fd
        s = self.projector(f_s)
        t = f_t.detach()
        if self.split_form == "fft":
            (s_low, s_high), (t_low, t_high) = band_split_fft(s, self.cut), band_split_fft(t, self.cut)
        else:
            s_low, s_high, t_low, t_high = s @ self.p_low, s @ self.p_high, t @ self.p_low, t @ self.p_high
        out: Terms = {
            "low": (c.w_low, low_band_loss(s_low, t_low)),
            "high": (c.w_high, high_band_loss(s_high, t_high, log=c.log_mse)),
        }
        y = self.class_targets(y, z_t)
        if c.shared_classifier:
            align = (F.cross_entropy(self.cls_low(s_low), y) + F.cross_entropy(self.cls_low(t_low), y)
                     + F.cross_entropy(self.cls_high(s_high), y) + F.cross_entropy(self.cls_high(t_high), y))
            out["align"] = (c.w_align, align)
        if c.band_heads:
            heads = F.cross_entropy(self.head_low(s_low), y) + F.cross_entropy(self.head_high(s_high), y)
            out["band_heads"] = (c.w_band_heads, heads)
        return out


METHODS: dict[str, type[Objective]] = {
    "none": NoKD,
    "self-training": SelfTraining,
    "pseudo": PseudoLabels,
    "kd": LogitKD,
    "feat": FeatureMSE,
    "dkd": DecoupledKD,
    "dist": DIST,
    "fd": FDCMKD,
}


def build_objective(method: str, d_student: int, d_teacher: int, num_classes: int,
                    cfg: DistillConfig) -> Objective:
    if method not in METHODS:
        raise ValueError(f"unknown distill.method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method](d_student, d_teacher, num_classes, cfg)
