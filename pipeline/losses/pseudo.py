"""Hard pseudo-labels on unlabelled rows: supervision transfer (Gupta et al. 2016) and FixMatch (Sohn et al. 2020).

    L = (1 / |U|) * sum_{i in U} 1[max_c p_i,c >= tau] * CE(z_s,i, argmax_c p_i,c),  p = softmax(z_ref),

over the unlabelled rows U of the batch (``y == -1``); 0 when the batch has none. ``z_ref`` [B, C] is the frozen
teacher's logits (``pseudo``) or the student's own on the clean view of the clip, without gradient
(``self-training``); z_s [B, C] the student's logits on its training (augmented) view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pseudo_label_loss(logits_s: torch.Tensor, logits_ref: torch.Tensor, y: torch.Tensor,
                      threshold: float) -> torch.Tensor:
    unlabelled = y < 0
    conf, target = torch.softmax(logits_ref.detach().float(), dim=1).max(1)
    mask = (unlabelled & (conf >= threshold)).float()
    per_row = F.cross_entropy(logits_s, target, reduction="none")
    return (per_row * mask).sum() / unlabelled.sum().clamp(min=1)


def labelled_cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
                           partial: bool = True) -> torch.Tensor:
    """CE over the labelled rows (``y >= 0``) only, their mean; 0 when none is labelled: an unlabelled row's logits
    get no gradient. ``partial=False`` (the caller knows every row is labelled; no device-to-host check per step)
    is exactly ``F.cross_entropy(logits, y)``."""
    if not partial:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    labelled = y >= 0
    per_row = F.cross_entropy(logits, y.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    return (per_row * labelled.float()).sum() / labelled.sum().clamp(min=1)
