"""Band split of FD-CMKD: linear algebra identities and agreement with the rfft definition."""

import pytest
import torch

from fdkd.pipeline.losses.fd import band_projectors, band_split, band_split_fft, fd_feature_losses


@pytest.mark.parametrize("dim", [8, 9, 32, 64, 127])
def test_projectors_partition_identity(dim):
    p_low, p_high = band_projectors(dim, dtype=torch.float64)
    mean = torch.full((dim, dim), 1.0 / dim, dtype=torch.float64)
    torch.testing.assert_close(p_low + p_high + mean, torch.eye(dim, dtype=torch.float64))
    for p in (p_low, p_high):
        torch.testing.assert_close(p, p.T)  # symmetric
        torch.testing.assert_close(p @ p, p)  # idempotent
    torch.testing.assert_close(p_low @ p_high, torch.zeros_like(p_low), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dim,cut", [(64, None), (64, 1), (64, 32), (33, 5)])
def test_matmul_form_equals_rfft_mask_definition(dim, cut):
    x = torch.randn(16, dim, dtype=torch.float64)
    low, high = band_split(x, cut)
    ref_low, ref_high = band_split_fft(x, cut)
    torch.testing.assert_close(low, ref_low)
    torch.testing.assert_close(high, ref_high)
    # and against a literal mask over the bins, written out here
    spec = torch.fft.rfft(x, dim=-1)
    c = dim // 4 if cut is None else cut
    keep = torch.zeros(dim // 2 + 1, dtype=torch.bool)
    keep[1 : c + 1] = True
    torch.testing.assert_close(low, torch.fft.irfft(spec * keep, n=dim, dim=-1))


def test_bands_are_zero_mean_and_drop_dc():
    x = torch.randn(8, 32, dtype=torch.float64) + 5.0  # a large shared offset (DC)
    low, high = band_split(x)
    assert low.shape == high.shape == x.shape
    torch.testing.assert_close(low.mean(-1), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(high.mean(-1), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)
    # a constant vector is pure DC: both bands vanish
    low_c, high_c = band_split(torch.ones(2, 32, dtype=torch.float64))
    assert low_c.abs().max() < 1e-12 and high_c.abs().max() < 1e-12
    # low + high + mean reconstructs x
    torch.testing.assert_close(low + high + x.mean(-1, keepdim=True), x)


def test_cut_selects_frequencies():
    dim = 32
    t = torch.arange(dim, dtype=torch.float64)
    slow = torch.cos(2 * torch.pi * 2 * t / dim)[None]  # bin 2 <= cut 8: low band
    fast = torch.cos(2 * torch.pi * 12 * t / dim)[None]  # bin 12 > cut 8: high band
    low, high = band_split(slow + fast)
    torch.testing.assert_close(low, slow)
    torch.testing.assert_close(high, fast)


def test_gradients_flow_through_both_forms():
    for method in ("matmul", "fft"):
        x = torch.randn(4, 16, requires_grad=True)
        low, high = band_split(x, method=method)
        (low.pow(2).sum() + 2 * high.pow(2).sum()).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_shapes_and_cuts_are_named():
    with pytest.raises(ValueError, match="cut must be in 1..8"):
        band_split(torch.randn(2, 16), cut=9)
    with pytest.raises(ValueError, match=r"expects \[B, D\]"):
        band_split(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="project the student first"):
        fd_feature_losses(torch.randn(2, 16), torch.randn(2, 32))
