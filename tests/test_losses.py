"""Every distillation loss: zero at agreement, no gradient into the teacher, stored golden values."""

import json

import pytest
import torch

from pipeline.config import DistillConfig
from pipeline.losses.dist import dist_loss
from pipeline.losses.dkd import dkd_loss
from pipeline.losses.frequency import fd_feature_losses, high_band_loss, log_compress, std_normalize
from pipeline.losses.kd import kd_loss
from pipeline.objectives import METHODS, build_objective

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
