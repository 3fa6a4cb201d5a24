"""Hinton logit KD (Hinton et al. 2015).

    L_kd = T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),  batch-mean; z: [B, C] logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t.detach() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
