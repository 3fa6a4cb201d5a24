"""Stage ``teacher``: train a unimodal teacher on its modality (CE only), or check a given one.

Reads the dataset; writes ``teacher.<modality>.pt`` (+ ``.config.yaml``) and
``teacher.<modality>.metrics.jsonl`` in the run directory. With ``teacher.checkpoint`` set,
nothing is trained: the given teacher is loaded and evaluated.

The teacher trains on the dataset file's labels (``PairedDataset.teacher_labels``), not the student's:
``data.labelled`` and ``data.label_noise`` never reach it. A built-in preset labels every training image;
a manifest's empty label cells are unlabelled for the teacher too, and one with no labelled training row
needs ``teacher.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fdkd import artifacts
from fdkd.pipeline import accel, data
from fdkd.pipeline.config import RunConfig
from fdkd.pipeline.objectives import NoKD
from fdkd.pipeline.progress import progress_bar
from fdkd.pipeline.stages import arch_dict, load_teacher, reset_log, save_with_config, setup, teacher_path, tensors
from fdkd.pipeline.train import Direction, accuracy, fit, predict


def run(cfg: RunConfig, modality: str | None = None) -> tuple[Path, dict]:
    """Train (or load) the teacher for ``modality`` (default: ``teacher.modality``); returns (path, metrics)."""
    from fdkd.pipeline.models.encoders import build_encoder

    modality = modality or cfg.teacher.modality
    setup(cfg)
    ds = data.load(cfg)
    x, _ = tensors(ds)
    y = torch.from_numpy(ds.teacher_labels)
    test = ds.indices("test")
    if cfg.teacher.checkpoint is not None and modality == cfg.teacher.modality:
        model, path = load_teacher(cfg, modality, ds)
        return path, {"test_acc": accuracy(predict(model, x[modality][test]), y[test])}
    if not (ds.teacher_labels[ds.indices("train")] >= 0).any():
        raise ValueError(f"dataset {ds.path}: no training pair has a label, so there is nothing to train the "
                         f"{modality} teacher on; set teacher.checkpoint to a trained teacher (it then supervises "
                         "every pair)")
    arch = arch_dict(cfg.teacher.model, ds.x[modality].shape[1:], ds.num_classes)
    model = build_encoder(**arch)
    objective = NoKD(model.num_features, model.num_features, ds.num_classes, cfg.distill)
    direction = Direction(f"teacher[{modality}]", model, objective, x[modality])
    path = teacher_path(cfg, modality)
    log = reset_log(cfg.run_dir / artifacts.TEACHER_METRICS.format(modality=modality))
    acc = accel.setup(cfg.accel)
    with progress_bar() as p:
        fit([direction], y, ds.split, cfg.teacher.optim, seed=cfg.seed, grad_norm_every=0, log=log,
            progress=p, description=f"teacher ({modality})", acc=acc)
    metrics = {**direction.best, "test_acc": accuracy(predict(model, x[modality][test]), y[test])}
    save_with_config(path, model, arch, cfg, ds, modality, metrics)
    return path, metrics
