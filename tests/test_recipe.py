"""The training recipe (optim.name, schedule, warmup, clipping, accumulation, teacher label smoothing) and the
budget (fixed epochs, or a step budget with early stopping on validation): its arithmetic, its config errors, what
fit() does with it and the training record that says why it stopped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fdkd.pipeline.config import ConfigError, DistillConfig, OptimConfig, load_config
from fdkd.pipeline.models.encoders import build_encoder
from fdkd.pipeline.objectives import build_objective
from fdkd.pipeline.train import Budget, Direction, batch_bounds, fit, lr_at, poly_lr


def _data(n_train=48, n_val=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 8, 8, generator=gen) + y[:, None, None, None] * 0.8  # learnable, not trivially
    return x, y, np.array([0] * n_train + [1] * n_val)


def _direction(x, name="s"):
    torch.manual_seed(0)
    s = build_encoder("conv", 1, 2, width=4, depth=2)
    return Direction(name, s, build_objective("none", s.num_features, s.num_features, 2, DistillConfig()), x)


# ---- the learning rate -------------------------------------------------------------------------


def test_without_warmup_poly_is_the_old_schedule_exactly():
    opt = OptimConfig()
    assert all(lr_at(opt, s, 90) == poly_lr(opt, s, 90) for s in range(90))


def test_warmup_rises_linearly_then_the_schedule_spans_the_rest():
    for schedule in ("poly", "cosine"):
        opt = OptimConfig(lr=0.1, final_lr=0.001, schedule=schedule)
        lrs = [lr_at(opt, s, 100, warmup=10) for s in range(100)]
        assert lrs[:10] == pytest.approx([0.1 * (s + 1) / 10 for s in range(10)])
        assert lrs[10] == pytest.approx(0.1)  # the schedule starts where the warmup ends
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # then decays monotonically
        assert lrs[-1] > 0.001 and lr_at(opt, 100, 100, warmup=10) == pytest.approx(0.001)


def test_cosine_is_half_way_at_the_middle():
    opt = OptimConfig(lr=0.1, final_lr=0.0, schedule="cosine")
    assert lr_at(opt, 50, 100) == pytest.approx(0.05)
    assert lr_at(opt, 0, 100) == pytest.approx(0.1)


# ---- the budget --------------------------------------------------------------------------------


def test_step_budget_plans_epochs_from_optimizer_steps():
    opt = OptimConfig(stop="early", max_steps=100, max_epochs=300, min_epochs=3)
    assert Budget.plan(opt, 7, early=True).epochs == math.ceil(100 / 7)
    assert Budget.plan(opt.model_copy(update={"max_epochs": 5}), 7, early=True).epochs == 5
    assert Budget.plan(opt.model_copy(update={"max_steps": 2}), 7, early=True).epochs == 3  # never below min_epochs
    assert Budget.plan(opt, 7, early=False).epochs == opt.epochs


def test_auto_stops_early_on_a_manifest_only():
    opt = OptimConfig()
    assert opt.stop == "auto" and opt.early(manifest=True) and not opt.early(manifest=False)
    assert not OptimConfig(stop="epochs").early(manifest=True)
    assert OptimConfig(stop="early").early(manifest=False)
    builtin = load_config(None, [])  # the built-in job keeps its fixed, 5-minute epochs
    assert not builtin.distill.optim.early(builtin.data.source == "manifest")


@pytest.mark.parametrize(("sets", "words"), [
    (["distill.optim.name=adam"], ["distill.optim.name", "sgd", "adamw"]),
    (["distill.optim.schedule=step"], ["distill.optim.schedule", "poly", "cosine"]),
    (["distill.optim.grad_accum_steps=0"], ["distill.optim.grad_accum_steps"]),
    (["distill.optim.clip_grad_norm=0"], ["distill.optim.clip_grad_norm"]),
    (["distill.optim.warmup_epochs=-1"], ["distill.optim.warmup_epochs"]),
    (["distill.optim.min_epochs=20", "distill.optim.max_epochs=10"], ["distill.optim", "min_epochs", "max_epochs"]),
    (["distill.optim.stop=epochs", "distill.optim.warmup_epochs=9"], ["distill.optim", "warmup_epochs", "epochs"]),
    (["distill.optim.lr=0.001", "distill.optim.final_lr=0.01"], ["distill.optim", "final_lr"]),
    (["distill.optim.betas=[0.9, 1.5]"], ["distill.optim.betas"]),
    (["distill.optim.patience=0"], ["distill.optim.patience"]),
    (["teacher.label_smoothing=1.0"], ["teacher.label_smoothing"]),
    (["tracking.tensorboard=maybe"], ["tracking.tensorboard"]),
])
def test_bad_recipe_settings_name_the_field(sets, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, sets)
    assert all(w in str(e.value) for w in words), str(e.value)


# ---- what fit() does with it -------------------------------------------------------------------


def test_early_stopping_stops_and_says_why():
    x, y, split = _data()
    d = _direction(x)
    # lr 0: nothing changes after the first epoch, so validation never rises again
    opt = OptimConfig(lr=1e-9, final_lr=0, stop="early", patience=2, min_epochs=3, max_epochs=40, max_steps=None)
    records = fit([d], y, split, opt, seed=0, grad_norm_every=0, early=True)
    t = d.training
    assert t["stop"] == "early" and t["epochs_planned"] == 40
    assert t["epochs_run"] == len(records) == 3  # min_epochs holds it to 3, best epoch 0 + patience 2 ends it there
    assert "optim.patience" in t["stopped"] and t["steps"] == 3 * len(batch_bounds(48, 64))


def test_budget_without_patience_runs_the_planned_epochs():
    x, y, split = _data()
    d = _direction(x)
    opt = OptimConfig(batch_size=16, stop="early", patience=None, min_epochs=1, max_steps=7)
    records = fit([d], y, split, opt, seed=0, grad_norm_every=0, early=True)
    assert len(records) == 3 and d.training["stop"] == "budget" and "optim.max_steps=7" in d.training["stopped"]
    assert d.training["steps"] == 9  # 3 steps per epoch, the epoch that crosses the budget runs whole


def test_fixed_epochs_record():
    x, y, split = _data()
    d = _direction(x)
    fit([d], y, split, OptimConfig(epochs=2), seed=0, grad_norm_every=0)
    assert d.training["stop"] == "epochs" and d.training["epochs_run"] == 2 and "optim.epochs" in d.training["stopped"]


def test_adamw_trains_and_differs_from_sgd():
    x, y, split = _data()
    sgd, adamw = _direction(x), _direction(x)
    fit([sgd], y, split, OptimConfig(epochs=3, batch_size=16), seed=0, grad_norm_every=0)
    records = fit([adamw], y, split, OptimConfig(epochs=3, batch_size=16, name="adamw", lr=0.01), seed=0,
                  grad_norm_every=0)
    assert adamw.training["optimizer"] == "adamw" and records[-1]["train_acc"] > 0.6
    w_sgd, w_adam = sgd.student.state_dict(), adamw.student.state_dict()
    assert any(not torch.equal(w_sgd[k], w_adam[k]) for k in w_sgd)


def test_accumulation_takes_one_step_per_group():
    x, y, split = _data()
    d = _direction(x)
    fit([d], y, split, OptimConfig(epochs=2, batch_size=8, grad_accum_steps=4), seed=0, grad_norm_every=0)
    # 48 rows / 8 = 6 batches per epoch, in groups of 4: 2 optimizer steps per epoch (the last group has 2)
    assert d.training["steps"] == 4


def test_clipping_bounds_each_step():
    """With a tiny clip norm, no momentum and no weight decay, each step moves the weights by at most lr x clip."""
    x, y, split = _data()
    d = _direction(x)
    params = {n: p.detach().clone() for n, p in d.student.named_parameters()}
    opt = OptimConfig(epochs=1, batch_size=16, lr=0.1, final_lr=0.1, momentum=0, weight_decay=0,
                      clip_grad_norm=1e-3)
    fit([d], y, split, opt, seed=0, grad_norm_every=0)
    moved = torch.cat([(p.detach() - params[n]).flatten() for n, p in d.student.named_parameters()]).norm()
    assert 0 < float(moved) <= 3 * 0.1 * 1e-3 * (1 + 1e-4)  # 3 steps


def test_clipping_is_per_direction():
    """Two students in one loop: clipping one (huge gradients) never changes the other's steps."""
    x, y, split = _data()
    opt = OptimConfig(epochs=2, batch_size=16, clip_grad_norm=0.5)
    alone = _direction(x, "a")
    fit([alone], y, split, opt, seed=0, grad_norm_every=0)

    class Loud(torch.nn.Module):
        needs_teacher, labelled_only, self_teacher = False, True, False

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return {k: (w, v * 1e4) for k, (w, v) in self.inner(*args).items()}

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

    a, b = _direction(x, "a"), _direction(x, "b")
    b.objective = Loud(b.objective)
    fit([a, b], y, split, opt, seed=0, grad_norm_every=0)
    ref = alone.student.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in a.student.state_dict().items())


def test_teacher_label_smoothing_is_the_teachers_own(tiny_cfg, tiny_dataset, monkeypatch):
    from fdkd.pipeline import teacher, train

    seen = []
    real_fit = train.fit

    def spy(directions, *args, **kwargs):
        seen.append(directions[0].objective.label_smoothing)
        return real_fit(directions, *args, **kwargs)

    monkeypatch.setattr(teacher, "fit", spy)
    cfg = load_config(None, [*_tiny_sets(tiny_cfg), "name=ls-teacher", "teacher.label_smoothing=0.2",
                             "teacher.optim.epochs=1", "distill.method=none", "distill.label_smoothing.epsilon=0.1"])
    _, metrics = teacher.run(cfg)
    assert seen == [0.2] and metrics["training"]["epochs_run"] == 1


def _tiny_sets(tiny_cfg):
    from tests.conftest import tiny_overrides

    return tiny_overrides(tiny_cfg.runs_dir.parent)
