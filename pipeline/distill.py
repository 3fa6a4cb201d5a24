"""Stage ``distill``: train the student on modality B from the frozen teacher on modality A.

Reads the dataset and ``teacher.<A>.pt`` (or ``teacher.checkpoint``); writes ``student.pt``
(backbone + its own head only; projector and shared classifiers are training-only),
``student.config.yaml`` and ``metrics.jsonl`` (every loss term by name, its gradient norm on
the student's pooled features, train/val accuracy, per epoch). An audio student trains on
augmented clips (``distill.augment``, on by default; the teacher's input never is); its metrics
add ``test_unseen_accent_acc`` where the dataset holds out whole accents. With ``--bidirectional`` the
reverse student (modality A, taught by the teacher on B) is trained in the same loop with one
optimizer and summed losses, and saved as ``student.reverse.pt``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import artifacts, data
from pipeline.augment import student_augmenter
from pipeline.config import RunConfig
from pipeline.objectives import METHODS, build_objective
from pipeline.progress import progress_bar
from pipeline.stages import arch_dict, load_teacher, reset_log, save_with_config, setup, tensors
from pipeline.train import Direction, accuracy, fit, predict


def _direction(cfg: RunConfig, ds, x, name: str, student_mod: str, teacher_mod: str):
    from pipeline.models.encoders import build_encoder

    arch = arch_dict(cfg.distill.student, ds.x[student_mod].shape[1:], ds.num_classes)
    student = build_encoder(**arch)
    teacher, d_teacher = None, student.num_features
    if METHODS[cfg.distill.method].needs_teacher:  # `none` trains the student alone
        teacher, _ = load_teacher(cfg, teacher_mod, ds)
        with torch.no_grad():
            d_teacher = teacher.forward_features(x[teacher_mod][:2]).shape[1]
    objective = build_objective(cfg.distill.method, student.num_features, d_teacher, ds.num_classes, cfg.distill)
    return Direction(name, student, objective, x[student_mod], teacher, x[teacher_mod]), arch


def run(cfg: RunConfig) -> tuple[Path, dict]:
    """Distill; returns (path of student.pt, metrics of every trained student).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; rank 0 alone builds the data,
    writes metrics and checkpoints.
    """
    from pipeline import accel

    setup(cfg)
    acc = accel.setup(cfg.accel)
    try:
        if acc.is_main:
            data.prepare(cfg)
        acc.barrier()
        ds = data.load(cfg)
        x, y = tensors(ds)
        x = {m: acc.host(t) for m, t in x.items()}
        s_mod, t_mod = cfg.student_modality, cfg.teacher.modality
        plan = [("student", s_mod, t_mod, cfg.run_dir / artifacts.STUDENT)]
        if cfg.distill.bidirectional:
            plan.append(("reverse", t_mod, s_mod, cfg.run_dir / artifacts.STUDENT_REVERSE))
        built = [_direction(cfg, ds, x, name, sm, tm) for name, sm, tm, _ in plan]
        for i, ((d, _), (_, sm, _, _)) in enumerate(zip(built, plan, strict=True)):
            # a seed per rank and direction: ranks see different rows, and so draw different augmentations
            d.augment = student_augmenter(cfg.distill.augment, ds, sm, seed=(cfg.seed * 100 + i) * 1000 + acc.rank)
        band_split = None
        for d, _ in built:
            if hasattr(d.objective, "use_band_split"):
                band_split = d.objective.use_band_split(cfg.accel.band_split, acc.device)
        log = reset_log(cfg.run_dir / artifacts.METRICS) if acc.is_main else None
        with progress_bar() as p:
            fit([d for d, _ in built], y, ds.split, cfg.distill.optim, seed=cfg.seed,
                teacher_cache=cfg.distill.teacher_cache, grad_norm_every=cfg.distill.grad_norm_every, log=log,
                progress=p, description=f"distill ({cfg.distill.method})", acc=acc)
        test = ds.indices("test")
        results = {}
        for (d, arch), (name, sm, _, path) in zip(built, plan, strict=True):
            metrics = {"method": cfg.distill.method, **d.best, "world_size": acc.world,
                       "augment": d.augment is not None,
                       "test_acc": accuracy(predict(d.student, x[sm][test]), y[test])}
            if ds.has_split("test_unseen_accent") and sm == "audio":
                unseen = ds.indices("test_unseen_accent")
                metrics["test_unseen_accent_acc"] = accuracy(predict(d.student, x[sm][unseen]), y[unseen])
            if band_split:
                metrics["band_split"] = band_split
            if acc.is_main:
                save_with_config(path, d.student, arch, cfg, ds, sm, metrics, d.objective.state_dict())
            results[name] = metrics
        acc.barrier()
        return plan[0][3], results
    finally:
        accel.teardown(acc)
