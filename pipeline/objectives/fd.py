"""The objective of ``fd`` (FD-CMKD, METHOD.md): the weighted sum of its terms, with its training-only projector,
band projectors and shared classifiers; settings ``distill.fd``, the band split and losses ``fdkd.pipeline.losses.fd``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fdkd.pipeline.losses.fd import (
    band_projectors,
    band_split_fft,
    default_cut,
    fastest_band_split,
    high_band_loss,
    low_band_loss,
)
from fdkd.pipeline.objectives.base import Objective, Terms


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
