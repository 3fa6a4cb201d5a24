"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022).

With p = softmax(z / T) for logits z [B, C] and rho the Pearson correlation:

    inter = 1 - mean_b rho(p_s[b, :], p_t[b, :])        (relations between classes, per sample)
    intra = 1 - mean_c rho(p_s[:, c], p_t[:, c])        (relations within a class, across samples)
    L_dist = T^2 * (beta * inter + gamma * intra)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> torch.Tensor:
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t.detach() / temperature, dim=1)
    inter = 1 - _pearson_rows(p_s, p_t).mean()
    intra = 1 - _pearson_rows(p_s.T, p_t.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)
