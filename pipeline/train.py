"""The training loop shared by teacher training and distillation.

Full-batch-in-memory data (the paired sets are small arrays of features), seeded shuffling,
SGD with momentum and polynomial learning-rate decay, per-term loss and gradient-norm logging,
checkpoint selection on the **validation** split with the student's own head.

The frozen teacher's features and logits are computed once per training sample and reused
every epoch (``teacher_cache``), since nothing about them changes; ``teacher_cache=False`` runs
the teacher every step, the way the reference code does (kept for the speed benchmark).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline.config import OptimConfig
from pipeline.objectives import Objective

EVAL_BATCH = 512


@dataclass
class Direction:
    """One student trained against one (optional) frozen teacher."""

    name: str
    student: nn.Module
    objective: Objective
    x_student: torch.Tensor  # all rows, student modality
    teacher: nn.Module | None = None
    x_teacher: torch.Tensor | None = None  # all rows, teacher modality
    cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (features, logits) for the train rows
    best_state: dict | None = None
    best: dict = field(default_factory=dict)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, with_features: bool = False):
    """Batched eval-mode forward: logits [N, C] (and features [N, D])."""
    model.eval()
    feats, logits = [], []
    for start in range(0, len(x), EVAL_BATCH):
        f = model.forward_features(x[start : start + EVAL_BATCH])
        feats.append(f)
        logits.append(model.forward_head(f))
    z = torch.cat(logits)
    return (torch.cat(feats), z) if with_features else z


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def poly_lr(opt: OptimConfig, step: int, total: int) -> float:
    return (opt.lr - opt.final_lr) * (1 - step / total) ** opt.poly_power + opt.final_lr


def fit(directions: list[Direction], y: torch.Tensor, split: np.ndarray, opt: OptimConfig, *, seed: int,
        teacher_cache: bool = True, grad_norm_every: int = 10, log=None, progress=None,
        description: str = "train") -> list[dict]:
    """Train every direction jointly (one optimizer, summed losses); returns per-epoch records.

    Each direction's best validation state is left in ``direction.best_state`` and loaded back
    into its student at the end.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx = torch.from_numpy(np.flatnonzero(split == 0))
    val_idx = torch.from_numpy(np.flatnonzero(split == 1))
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError("training needs non-empty train and val splits")
    for d in directions:
        if d.teacher is not None:
            d.teacher.eval()  # frozen by the caller (pipeline.stages.freeze); eval keeps BN statistics fixed
            if teacher_cache and d.objective.needs_teacher:
                d.cache = predict(d.teacher, d.x_teacher[train_idx], with_features=True)
    params = [p for d in directions for m in (d.student, d.objective) for p in m.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / opt.batch_size)
    total_steps = opt.epochs * steps_per_epoch
    records, step = [], 0
    task = progress.add_task(description, total=opt.epochs, info="") if progress else None
    for epoch in range(opt.epochs):
        t0 = time.perf_counter()
        for d in directions:
            d.student.train()
            d.objective.train()
        perm = torch.randperm(len(train_idx), generator=gen)
        sums: dict[str, dict[str, float]] = {d.name: {} for d in directions}
        norms: dict[str, dict[str, list[float]]] = {d.name: {} for d in directions}
        correct = {d.name: 0 for d in directions}
        for b in range(steps_per_epoch):
            local = perm[b * opt.batch_size : (b + 1) * opt.batch_size]
            rows = train_idx[local]
            yb = y[rows]
            lr = poly_lr(opt, step, total_steps)
            for g in sgd.param_groups:
                g["lr"] = lr
            probe = grad_norm_every > 0 and b % grad_norm_every == 0
            total = 0.0
            for d in directions:
                f_s = d.student.forward_features(d.x_student[rows])
                z_s = d.student.forward_head(f_s)
                f_t = z_t = None
                if d.objective.needs_teacher:
                    if d.cache is not None:
                        f_t, z_t = d.cache[0][local], d.cache[1][local]
                    else:
                        with torch.no_grad():
                            f_t = d.teacher.forward_features(d.x_teacher[rows])
                            z_t = d.teacher.forward_head(f_t)
                terms = d.objective(f_s, z_s, f_t, z_t, yb, epoch)
                loss = sum(w * v for w, v in terms.values())
                for name, (w, v) in terms.items():
                    sums[d.name][name] = sums[d.name].get(name, 0.0) + float(v.detach()) * len(rows)
                    if probe and w != 0 and v.requires_grad:
                        (g,) = torch.autograd.grad(w * v, f_s, retain_graph=True, allow_unused=True)
                        norms[d.name].setdefault(name, []).append(0.0 if g is None else float(g.norm()))
                correct[d.name] += int((z_s.detach().argmax(1) == yb).sum())
                total = total + loss
            sgd.zero_grad(set_to_none=True)
            total.backward()
            sgd.step()
            step += 1
        seconds = time.perf_counter() - t0
        for d in directions:
            val_acc = accuracy(predict(d.student, d.x_student[val_idx]), y[val_idx])
            rec = {"epoch": epoch, "direction": d.name, "lr": lr, "epoch_seconds": round(seconds, 4),
                   "train_acc": correct[d.name] / len(train_idx), "val_acc": val_acc}
            for name, s in sums[d.name].items():
                rec[f"loss/{name}"] = s / len(train_idx)
            for name, vals in norms[d.name].items():
                rec[f"grad_norm/{name}"] = float(np.mean(vals))
            if d.best_state is None or val_acc > d.best["val_acc"]:
                d.best_state = copy.deepcopy(d.student.state_dict())
                d.best = {"epoch": epoch, "val_acc": val_acc}
            records.append(rec)
            if log:
                log(rec)
        if progress:
            info = "  ".join(f"{d.name} val {records[-len(directions) + i]['val_acc']:.3f}"
                             for i, d in enumerate(directions))
            progress.update(task, advance=1, info=info)
    for d in directions:
        d.student.load_state_dict(d.best_state)
        d.student.eval()
    return records
