"""Stage ``teacher``: train a unimodal teacher on its modality (CE only), or check a given one.

Reads the dataset; writes ``teacher.<modality>.pt`` (+ ``.config.yaml``) and
``teacher.<modality>.metrics.jsonl`` in the run directory. With ``teacher.checkpoint`` set,
nothing is trained: the given teacher is loaded and evaluated.

The teacher trains on the dataset file's labels (``PairedDataset.teacher_labels``), not the student's:
``data.labelled`` and ``data.label_noise`` never reach it. A built-in preset labels every training image;
a manifest's empty label cells are unlabelled for the teacher too, and one with no labelled training row
needs ``teacher.checkpoint``.

Training follows ``teacher.optim`` (``fdkd.pipeline.train.fit``: optimizer, schedule, budget; early stopping by default
on a manifest) with ``teacher.label_smoothing`` on its cross-entropy; a stage killed mid-training resumes from its
last epoch (``fdkd.pipeline.resume``, ``teacher.<modality>.train-state.pt`` while it trains). Its epochs also go to
TensorBoard where ``tracking.tensorboard`` allows (``fdkd.pipeline.tracking``).

Under torchrun (``accel.nproc`` > 1: ``fdkd.pipeline.teacher_worker``, one process per rank) the teacher trains as
distillation does (DistributedDataParallel, each epoch's seeded permutation sharded across ranks, validation and
test accuracy gathered); rank 0 alone builds the data and writes the checkpoint, its metrics and training state. A
streamed dataset (``fdkd.pipeline.data.rows.StreamRows``) is read batch by batch, each rank decoding its own rows
only, ahead in ``data.workers`` DataLoader processes.

Every stage that needs the frozen teacher (distill, analyze, validate) finds it here: ``teacher_path`` (where this
stage writes it) and ``load_teacher`` (``teacher.checkpoint`` or the run's, frozen by ``freeze``), which refuses a
teacher whose class count is not the dataset's (``fdkd run`` asks before any stage runs).

With ``teacher.model.init`` the teacher starts from that weight file (``fdkd.pipeline.models.init``: a classifier of
another class count is replaced) and fine-tunes (``teacher.optim`` defaults to ``FINETUNE_LR`` and
``FINETUNE_WARMUP_EPOCHS``, ``fdkd.pipeline.config.model``); the file's path and sha256 go into the teacher's
metrics, hence the manifest and the report. An ecosystem teacher reads its input in its own normalisation
(``teacher.model.norm``), independent of the student's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fdkd import artifacts
from fdkd.pipeline import accel, data
from fdkd.pipeline.config import RunConfig, config_to_dict
from fdkd.pipeline.models.checkpoint import (
    FORMAT,
    is_torchscript,
    load_foreign_teacher,
    model_from_checkpoint,
    read_checkpoint,
    save_with_config,
)
from fdkd.pipeline.models.encoders import arch_dict
from fdkd.pipeline.models.init import load_init
from fdkd.pipeline.objectives import NoKD
from fdkd.pipeline.progress import console, progress_bar
from fdkd.pipeline.resume import TrainState, state_key
from fdkd.pipeline.tracking import StageLog
from fdkd.pipeline.train import Direction, eval_accuracy, fit, setup, tensors


def teacher_path(cfg: RunConfig, modality: str) -> Path:
    """Where ``fdkd teacher`` writes the teacher for ``modality`` (and where distill looks)."""
    return cfg.run_dir / artifacts.TEACHER.format(modality=modality)


def load_teacher(cfg: RunConfig, modality: str, ds=None):
    """The frozen teacher for ``modality``: ``teacher.checkpoint`` if set (and of that modality), else the run's.

    ``ds`` (the dataset) supplies input channels and class count for a bare state dict.
    """
    external = cfg.teacher.checkpoint if modality == cfg.teacher.modality else None
    path = external or teacher_path(cfg, modality)
    if not path.exists():
        raise FileNotFoundError(f"no {modality} teacher at {path}: run `fdkd teacher --modality {modality}` "
                                "first, or set teacher.checkpoint")
    if not is_torchscript(path):
        try:
            ckpt = read_checkpoint(path)
        except ValueError:
            ckpt = None
        if ckpt is not None and ckpt.get("format") == FORMAT:
            if ckpt.get("modality") not in (None, modality):
                raise ValueError(f"teacher {path} was trained on {ckpt['modality']}, not {modality}")
            if ds is not None and ckpt["arch"]["num_classes"] != ds.num_classes:
                raise ValueError(f"teacher {path} has {ckpt['arch']['num_classes']} classes but the dataset has "
                                 f"{ds.num_classes}: it was trained on other data")
            return freeze(model_from_checkpoint(ckpt)), path
    arch = None
    if cfg.teacher.checkpoint_arch is not None and ds is not None:
        arch = arch_dict(cfg.teacher.checkpoint_arch, ds.x[modality].shape[1:], ds.num_classes, modality,
                         ds.frontends[modality])
    model = freeze(load_foreign_teacher(path, arch))
    if ds is not None:
        check_classes(model, path, ds, modality)
    return model, path


def check_classes(model, path: Path, ds, modality: str) -> None:
    """Refuse a frozen teacher whose logits do not have one column per class of the dataset (a 1000-class
    ImageNet head on a 5-class task): distillation would fail far later, or compare the wrong columns."""
    x = torch.from_numpy(ds.x[modality][:2])  # two rows (a streamed column decodes just these)
    try:
        with torch.no_grad():
            classes = model.forward_head(model.forward_features(x)).shape[-1]
    except Exception as e:  # TorchScript raises RuntimeError subclasses of its own
        raise ValueError(f"teacher.checkpoint {path} fails on the dataset's {modality} input "
                         f"{list(x.shape[1:])}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if classes != ds.num_classes:
        raise ValueError(f"teacher.checkpoint {path} has {classes} classes but the dataset has {ds.num_classes} "
                         f"({', '.join(ds.class_names[:10])}{', ...' if ds.num_classes > 10 else ''}): a frozen "
                         "teacher must predict the dataset's classes; to start from its weights and train a new "
                         "head instead, set teacher.model.arch and teacher.model.init (and no teacher.checkpoint)")


def freeze(model):
    """Eval mode and no gradients (works for TorchScript modules too)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run(cfg: RunConfig, modality: str | None = None) -> tuple[Path, dict]:
    """Train (or load) the teacher for ``modality`` (default: ``teacher.modality``); returns (path, metrics).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; rank 0 alone builds the data and writes."""
    modality = modality or cfg.teacher.modality
    trains = cfg.teacher.checkpoint is None or modality != cfg.teacher.modality
    acc = accel.setup(cfg.accel)
    try:
        return _run(cfg, modality, trains, acc)
    finally:
        accel.teardown(acc)


def _run(cfg: RunConfig, modality: str, trains: bool, acc) -> tuple[Path, dict]:
    from fdkd.pipeline.models.encoders import build_encoder

    stage = f"teacher.{modality}"
    if trains:  # first: a resumed stage says so on its first line (rank 0); every rank reads the state
        state = TrainState.open(cfg.run_dir / artifacts.TRAIN_STATE.format(stage=stage),
                                _state_key(cfg, modality, acc.world), stage, announce=acc.is_main)
    setup(cfg)
    if acc.distributed:
        if acc.is_main:
            data.prepare(cfg)
        acc.barrier()
    ds = data.load(cfg)
    x, _ = tensors(ds)
    y = torch.from_numpy(ds.teacher_labels)
    test = ds.indices("test")
    workers = cfg.data.workers
    if cfg.teacher.checkpoint is not None and modality == cfg.teacher.modality:
        model, path = load_teacher(cfg, modality, ds)
        return path, {"test_acc": eval_accuracy(model, x[modality], y, test, acc, workers)}
    if not (ds.teacher_labels[ds.indices("train")] >= 0).any():
        raise ValueError(f"dataset {ds.path}: no training pair has a label, so there is nothing to train the "
                         f"{modality} teacher on; set teacher.checkpoint to a trained teacher (it then supervises "
                         "every pair)")
    arch = arch_dict(cfg.teacher.model, ds.x[modality].shape[1:], ds.num_classes, modality, ds.frontends[modality])
    model = build_encoder(**arch)
    init = None
    if cfg.teacher.model.init is not None and modality == cfg.teacher.modality:  # not the reverse teacher's
        init = load_init(model, cfg.teacher.model.init, "teacher.model.init",
                         say=console.print if acc.is_main else lambda *a, **k: None)
    objective = NoKD(model.num_features, model.num_features, ds.num_classes, cfg.distill)
    objective.label_smoothing = cfg.teacher.label_smoothing  # the teacher's own, never distill.label_smoothing
    direction = Direction(f"teacher[{modality}]", model, objective, x[modality])
    path = teacher_path(cfg, modality)
    log = (StageLog(cfg, stage, cfg.run_dir / artifacts.TEACHER_METRICS.format(modality=modality), state.records)
           if acc.is_main else None)
    try:
        with progress_bar() as p:
            fit([direction], y, ds.split, cfg.teacher.optim, seed=cfg.seed, grad_norm_every=0, log=log,
                progress=p, description=f"teacher ({modality})", acc=acc,
                early=cfg.teacher.optim.early(cfg.data.source == "manifest"), state=state, workers=workers)
    finally:
        if log is not None:
            log.close()
    metrics = {**direction.best, "test_acc": eval_accuracy(model, x[modality], y, test, acc, workers),
               "training": direction.training, **({"init": init} if init else {})}
    if acc.distributed:
        metrics["world_size"] = acc.world
    if acc.is_main:
        save_with_config(path, model, arch, cfg, ds, modality, metrics)
    acc.barrier()
    state.finish(acc.is_main)
    return path, metrics


def _state_key(cfg: RunConfig, modality: str, world: int = 1) -> str:
    """What the teacher's training depends on (its resumable state must match): its data, settings, seed and the
    world size (each rank's share of the rows)."""
    tree = config_to_dict(cfg)
    accel_cfg = {k: v for k, v in tree["accel"].items() if k not in ("nproc", "torchrun_args")}
    tree["data"].pop("workers", None)  # how many processes decode ahead changes no number: a resume may change it
    return state_key({"modality": modality, "accel": accel_cfg, **{k: tree[k] for k in ("seed", "data", "teacher",
                                                                                         "threads")}}, [], world)
