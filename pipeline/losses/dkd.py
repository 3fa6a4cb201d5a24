"""Decoupled KD (Zhao et al., CVPR 2022), logits [B, C], target [B].

    L_dkd = alpha * TCKD + beta * NCKD
    TCKD  = T^2 * KL([p_t^gt, 1 - p_t^gt] || [p_s^gt, 1 - p_s^gt])       (binary, target vs rest)
    NCKD  = T^2 * KL(softmax over non-target classes of z_t/T || same for z_s/T)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dkd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    logits_t = logits_t.detach()
    gt = F.one_hot(target, logits_s.shape[1]).bool()
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t / temperature, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * temperature**2
    masked_s = F.log_softmax(logits_s / temperature - 1000.0 * gt, dim=1)
    masked_t = F.log_softmax(logits_t / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(masked_s, masked_t, reduction="batchmean", log_target=True) * temperature**2
    return alpha * tckd + beta * nckd
