"""Every distillation loss: zero at agreement, no gradient into the teacher, stored golden values."""

import json

import numpy as np
import pytest
import torch

from fdkd.pipeline.config import DistillConfig
from fdkd.pipeline.losses.dist import dist_loss
from fdkd.pipeline.losses.dkd import dkd_loss
from fdkd.pipeline.losses.fd import fd_feature_losses, high_band_loss, log_compress, std_normalize
from fdkd.pipeline.losses.kd import kd_loss
from fdkd.pipeline.objectives import METHODS, build_objective

LOGIT_LOSSES = {
    "kd": lambda s, t, y: kd_loss(s, t, 4.0),
    "dkd": lambda s, t, y: dkd_loss(s, t, y, 1.0, 8.0, 4.0),
    "dist": lambda s, t, y: dist_loss(s, t, 1.0, 1.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(LOGIT_LOSSES))
def test_logit_losses_vanish_when_student_equals_teacher(name):
    z = torch.randn(16, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    assert abs(float(LOGIT_LOSSES[name](z.clone(), z, y))) < 1e-6  # DIST: eps in the Pearson denominator
    assert float(LOGIT_LOSSES[name](torch.randn(16, 10, dtype=torch.float64), z, y)) > 1e-3


@pytest.mark.parametrize("name", sorted(LOGIT_LOSSES))
def test_logit_losses_send_no_gradient_to_teacher(name):
    s = torch.randn(8, 10, requires_grad=True)
    t = torch.randn(8, 10, requires_grad=True)
    LOGIT_LOSSES[name](s, t, torch.randint(0, 10, (8,))).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_fd_feature_losses_zero_at_agreement_and_scale_invariant():
    f = torch.randn(8, 64, dtype=torch.float64)
    out = fd_feature_losses(f.clone(), f)
    assert set(out) == {"low", "high"}
    assert float(out["low"]) < 1e-20 and float(out["high"]) < 1e-20
    # Std() makes both terms blind to a per-sample scale and to a DC offset
    out = fd_feature_losses(3.0 * f + 7.0, f)
    assert float(out["low"]) < 1e-20 and float(out["high"]) < 1e-20
    assert float(fd_feature_losses(torch.randn(8, 64, dtype=torch.float64), f)["low"]) > 1e-4


def test_fd_feature_losses_detach_teacher():
    s = torch.randn(4, 32, requires_grad=True)
    t = torch.randn(4, 32, requires_grad=True)
    out = fd_feature_losses(s, t)
    (out["low"] + out["high"]).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_high_band_loss_is_logmse_of_normalised_features():
    s, t = torch.randn(4, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    expect = (log_compress(std_normalize(s)) - log_compress(std_normalize(t))).pow(2).mean()
    torch.testing.assert_close(high_band_loss(s, t), expect)
    plain = (std_normalize(s) - std_normalize(t)).pow(2).mean()
    torch.testing.assert_close(high_band_loss(s, t, log=False), plain)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_objectives_terms_and_teacher_isolation(method):
    cfg = DistillConfig(method=method)
    obj = build_objective(method, 16, 32, 10, cfg)
    f_s = torch.randn(8, 16, requires_grad=True)
    f_t = torch.randn(8, 32, requires_grad=True)
    z_s = torch.randn(8, 10, requires_grad=True)
    z_t = torch.randn(8, 10, requires_grad=True)
    terms = obj(f_s, z_s, f_t, z_t, torch.randint(0, 10, (8,)), epoch=0)
    assert "task" in terms
    sum(w * v for w, v in terms.values()).backward()
    assert f_t.grad is None and z_t.grad is None
    assert z_s.grad is not None


def test_fd_objective_zero_alignment_terms_when_student_equals_teacher():
    obj = build_objective("fd", 32, 32, 10, DistillConfig())
    f = torch.randn(8, 32)
    terms = obj(f.clone(), torch.randn(8, 10), f, torch.randn(8, 10), torch.randint(0, 10, (8,)))
    assert float(terms["low"][1]) < 1e-12 and float(terms["high"][1]) < 1e-12
    assert set(terms) == {"task", "low", "high", "align"}


def test_fd_ablation_switches_change_terms():
    base = DistillConfig().fd
    no_cls = build_objective("fd", 8, 8, 3, DistillConfig(fd=base.model_copy(update={"shared_classifier": False})))
    heads = build_objective("fd", 8, 8, 3, DistillConfig(fd=base.model_copy(update={"band_heads": True})))
    args = (torch.randn(4, 8), torch.randn(4, 3), torch.randn(4, 8), torch.randn(4, 3), torch.randint(0, 3, (4,)))
    assert "align" not in no_cls(*args)
    assert "band_heads" in heads(*args)
    nosplit = build_objective("fd", 8, 8, 3, DistillConfig(fd=base.model_copy(update={"band_split": False})))
    torch.testing.assert_close(nosplit.p_low, nosplit.p_high)


def test_golden_values():
    from tests.golden import PATH, compute

    stored = json.loads(PATH.read_text())
    now = compute()
    assert sorted(now) == sorted(stored), "loss terms changed: regenerate with `python tests/golden.py --write`"
    for key, value in stored.items():
        assert now[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


# ---- golden values against independent numpy formulas (not the implementation under test) -------------


def _np_inputs():
    from tests.golden import inputs

    return [t.numpy() for t in inputs()]


def _np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _stored(key):
    from tests.golden import PATH

    return json.loads(PATH.read_text())[key]


def test_golden_kd_is_the_explicit_kl_sum():
    _, _, z_s, z_t, _ = _np_inputs()
    t = 4.0
    p_s, p_t = _np_softmax(z_s / t), _np_softmax(z_t / t)
    explicit = t * t * sum(p_t[b, c] * (np.log(p_t[b, c]) - np.log(p_s[b, c]))
                           for b in range(len(z_s)) for c in range(z_s.shape[1])) / len(z_s)
    assert _stored("kd_T4") == pytest.approx(explicit, rel=1e-12)


def _np_tckd_nckd(z_s, z_t, y, t):
    """Per-sample TCKD and NCKD written out from the DKD paper's definitions."""
    p_s, p_t = _np_softmax(z_s / t), _np_softmax(z_t / t)
    rows = np.arange(len(y))
    b_s = np.stack([p_s[rows, y], 1 - p_s[rows, y]], 1)
    b_t = np.stack([p_t[rows, y], 1 - p_t[rows, y]], 1)
    tckd = t * t * (b_t * np.log(b_t / b_s)).sum(1)
    keep = np.ones_like(p_s, bool)
    keep[rows, y] = False
    q_s = p_s[keep].reshape(len(y), -1)
    q_t = p_t[keep].reshape(len(y), -1)
    q_s, q_t = q_s / q_s.sum(1, keepdims=True), q_t / q_t.sum(1, keepdims=True)
    nckd = t * t * (q_t * np.log(q_t / q_s)).sum(1)
    return tckd, nckd, p_t[rows, y]


def test_golden_dkd_from_its_definition_and_the_kd_identity():
    _, _, z_s, z_t, y = _np_inputs()
    tckd, nckd, pt_gt = _np_tckd_nckd(z_s, z_t, y, 4.0)
    assert _stored("dkd_a1_b8_T4") == pytest.approx(float(np.mean(tckd + 8.0 * nckd)), rel=1e-9)
    # the paper's identity KD = TCKD + (1 - p_t^gt) NCKD, per sample, through the torch implementations
    zs, zt, yt = (torch.from_numpy(a) for a in (z_s, z_t, y))
    for b in range(len(y)):
        kd = float(kd_loss(zs[b : b + 1], zt[b : b + 1], 4.0))
        dkd = float(dkd_loss(zs[b : b + 1], zt[b : b + 1], yt[b : b + 1], 1.0, 1.0 - float(pt_gt[b]), 4.0))
        assert dkd == pytest.approx(kd, rel=1e-9), b


def test_golden_dist_matches_numpy_corrcoef():
    _, _, z_s, z_t, _ = _np_inputs()
    p_s, p_t = _np_softmax(z_s), _np_softmax(z_t)
    inter = 1 - np.mean([np.corrcoef(p_s[b], p_t[b])[0, 1] for b in range(len(p_s))])
    intra = 1 - np.mean([np.corrcoef(p_s[:, c], p_t[:, c])[0, 1] for c in range(p_s.shape[1])])
    assert _stored("dist_T1") == pytest.approx(inter + intra, rel=1e-6)  # eps 1e-8 in the Pearson denominator


def test_golden_fd_matches_numpy_rfft_masks():
    f_s, f_t, _, _, _ = _np_inputs()
    d = f_s.shape[1]
    cut = d // 4
    bins = np.arange(d // 2 + 1)

    def bands(f):
        spec = np.fft.rfft(f, axis=1)
        low = np.fft.irfft(spec * ((bins >= 1) & (bins <= cut)), n=d, axis=1)
        high = np.fft.irfft(spec * (bins > cut), n=d, axis=1)
        return low, high

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def sigma(v):
        return np.sign(v) * np.log1p(np.abs(v))

    (s_low, s_high), (t_low, t_high) = bands(f_s), bands(f_t)
    assert _stored("fd_low") == pytest.approx(np.mean((unit(s_low) - unit(t_low)) ** 2), rel=1e-9)
    assert _stored("fd_high") == pytest.approx(np.mean((sigma(unit(s_high)) - sigma(unit(t_high))) ** 2), rel=1e-9)
