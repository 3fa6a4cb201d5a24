"""FD-CMKD's frequency decoupling along the **feature axis** (METHOD.md, steps 1-4).

For pooled features f in R^D, F = rfft(f) has D//2 + 1 bins. With cut c (default D // 4):

    low  = irfft(F masked to bins 1..c)          high = irfft(F masked to bins c+1..D//2)

Bin 0 (DC, the feature mean) is in neither band, so both bands are real, length D and
zero-mean. The split is linear: low = f @ P_low, high = f @ P_high with fixed symmetric
idempotent matrices and P_low + P_high + 11^T/D = I. ``band_split`` uses the matrix form by
default (no FFT op anywhere: exportable, and one small matmul); ``method="fft"`` is the
definition, kept for checking and for devices where it is faster.

    L_low  = mean_{B,D} (Std(s_low) - sg[Std(t_low)])^2
    L_high = mean_{B,D} (sigma(Std(s_high)) - sg[sigma(Std(t_high))])^2

with Std(x) = x / max(||x||_2, 1e-8) per sample and sigma(x) = sign(x) log(1 + |x|).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch


def default_cut(dim: int) -> int:
    return dim // 4


def _check(dim: int, cut: int) -> None:
    if not 1 <= cut <= dim // 2:
        raise ValueError(f"band cut must be in 1..{dim // 2} for feature width {dim}, got {cut}")


def _masks(dim: int, cut: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    bins = torch.arange(dim // 2 + 1, device=device)
    low = ((bins >= 1) & (bins <= cut)).to(dtype)
    high = (bins > cut).to(dtype)
    return low, high


def band_split_fft(x: torch.Tensor, cut: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: rfft along the last axis, mask, irfft. x: [..., D]."""
    dim = x.shape[-1]
    cut = default_cut(dim) if cut is None else cut
    _check(dim, cut)
    spec = torch.fft.rfft(x, dim=-1)
    m_low, m_high = _masks(dim, cut, x.device, spec.real.dtype)
    return torch.fft.irfft(spec * m_low, n=dim, dim=-1), torch.fft.irfft(spec * m_high, n=dim, dim=-1)


@lru_cache(maxsize=32)
def _projectors_cpu64(dim: int, cut: int) -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.eye(dim, dtype=torch.float64)
    return band_split_fft(eye, cut)  # rows are the bands of the basis vectors: band(x) = x @ P


def band_projectors(dim: int, cut: int | None = None, device=None, dtype=torch.float32):
    """(P_low, P_high), each [D, D], symmetric and idempotent; band(x) = x @ P."""
    cut = default_cut(dim) if cut is None else cut
    _check(dim, cut)
    return _projectors(dim, cut, str(torch.device(device or "cpu")), dtype)


@lru_cache(maxsize=64)
def _projectors(dim: int, cut: int, device: str, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    p_low, p_high = _projectors_cpu64(dim, cut)
    return p_low.to(device=device, dtype=dtype), p_high.to(device=device, dtype=dtype)


def band_split(x: torch.Tensor, cut: int | None = None,
               method: Literal["matmul", "fft"] = "matmul") -> tuple[torch.Tensor, torch.Tensor]:
    """Split pooled features x [B, D] into (low, high) bands, each [B, D]; DC in neither.

    Bins 1..cut are low, cut+1..D//2 high; ``cut=None`` means D // 4.
    """
    if x.ndim != 2:
        raise ValueError(f"band_split expects [B, D] features, got shape {tuple(x.shape)}")
    if method == "fft":
        return band_split_fft(x, cut)
    p_low, p_high = band_projectors(x.shape[-1], cut, device=x.device, dtype=x.dtype)
    return x @ p_low, x @ p_high


def fastest_band_split(dim: int, cut: int | None, device, batch: int = 64, repeats: int = 20) -> str:
    """Time both forms (forward and backward) on ``device``; returns "matmul" or "fft"."""
    import time

    x = torch.randn(batch, dim, device=device, requires_grad=True)
    best = {}
    for form in ("matmul", "fft"):
        for i in range(repeats + 3):
            if i == 3:
                if x.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            low, high = band_split(x, cut, method=form)
            (low.square().sum() + high.square().sum()).backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        best[form] = time.perf_counter() - t0
    return min(best, key=best.get)


def std_normalize(x: torch.Tensor) -> torch.Tensor:
    """Std(x) = x / max(||x||_2, 1e-8), per sample (scale consistency)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def log_compress(x: torch.Tensor) -> torch.Tensor:
    """sigma(x) = sign(x) * log(1 + |x|)."""
    return torch.sign(x) * torch.log1p(x.abs())


def low_band_loss(s_low: torch.Tensor, t_low: torch.Tensor) -> torch.Tensor:
    """L_low = mean (Std(s_low) - sg[Std(t_low)])^2."""
    return (std_normalize(s_low) - std_normalize(t_low).detach()).pow(2).mean()


def high_band_loss(s_high: torch.Tensor, t_high: torch.Tensor, log: bool = True) -> torch.Tensor:
    """L_high = mean (sigma(Std(s_high)) - sg[sigma(Std(t_high))])^2; ``log=False``: plain MSE (ablation)."""
    f = log_compress if log else (lambda v: v)
    return (f(std_normalize(s_high)) - f(std_normalize(t_high)).detach()).pow(2).mean()


def fd_feature_losses(student: torch.Tensor, teacher: torch.Tensor, cut: int | None = None) -> dict[str, torch.Tensor]:
    """The two unweighted alignment terms of FD-CMKD for features [B, D] of equal width.

    Returns ``{"low": L_low, "high": L_high}``; the teacher side is detached.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features "
                         f"{tuple(teacher.shape)} differ: project the student first")
    s_low, s_high = band_split(student, cut)
    t_low, t_high = band_split(teacher.detach(), cut)
    return {"low": low_band_loss(s_low, t_low), "high": high_band_loss(s_high, t_high)}
