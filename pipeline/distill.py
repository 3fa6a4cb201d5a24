"""Stage ``distill``: train the student on modality B from the frozen teacher on modality A.

Reads the dataset and ``teacher.<A>.pt`` (or ``teacher.checkpoint``); writes ``student.pt``
(backbone + its own head only; projector and shared classifiers are training-only),
``student.config.yaml`` and ``metrics.jsonl`` (every loss term by name, its gradient norm on
the student's pooled features, train/val accuracy, per epoch). An audio student trains on
augmented clips (``distill.augment``, on by default; the teacher's input never is); its metrics
add ``test_unseen_accent_acc`` where the dataset holds out whole accents. With ``--bidirectional`` the
reverse student (modality A, taught by the teacher on B) is trained in the same loop with one
optimizer and summed losses, and saved as ``student.reverse.pt``.

``method: auto`` (the default) trains every candidate of ``distill.auto.candidates`` per direction
and ships one only where it beats ``none`` (training alone) by more than the margin on all of validation,
cross-fitted (``fdkd.pipeline.auto``: each half of validation judged at the epoch the other half picked); every
candidate's validation,
judge and test accuracy, the winner and its margin over ``none`` go into the student's metrics (hence
``manifest.json`` and ``report.md``). In ``metrics.jsonl`` each candidate's direction is named
``student:<candidate>``; ``auto.rows.<direction>.npz`` keeps every candidate's per-epoch correctness on every
validation and test row (``fdkd.pipeline.auto.save_rows``: what lets a later rule be replayed without retraining).

Training follows ``distill.optim`` (``fdkd.pipeline.train.fit``: optimizer, schedule, budget; early stopping by
default on a manifest; why it stopped goes into the student's metrics as ``training``). A stage killed mid-training
resumes from its last epoch (``fdkd.pipeline.resume``: ``distill.train-state.pt`` while it trains, written by rank 0
and read by every rank); its epochs also go to TensorBoard where ``tracking.tensorboard`` allows.

Partly labelled data (``data.labelled``, or a manifest's empty labels): every teacher term applies to every
training pair, the cross-entropy to the labelled ones only (``fdkd.pipeline.objectives``); ``none`` trains on the
labelled pairs alone; the shuffled teacher deranges unlabelled pairs within the teacher's predicted class; the
class-prototype teacher (``distill.teacher_prototype``) gives every training pair its teacher-predicted class's mean
teacher output.

A streamed dataset (``ds.x[m]`` a ``fdkd.pipeline.data.rows.StreamRows``): training batches are decoded ahead in
``data.workers`` DataLoader processes (``fdkd.pipeline.train.fit``), the shuffled teacher's input is a lazy view
(``x.view(row_map)``), and each teacher cache is computed batch by batch into memory-mapped files under
``<run>/distill.teacher-cache/`` (removed when the stage ends); test accuracies are read in eval batches.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from fdkd import artifacts
from fdkd.pipeline import auto, controls, data
from fdkd.pipeline.augment import student_augmenter
from fdkd.pipeline.config import DistillConfig, RunConfig, config_to_dict
from fdkd.pipeline.data.rows import is_streamed
from fdkd.pipeline.models.checkpoint import save_with_config
from fdkd.pipeline.models.encoders import arch_dict
from fdkd.pipeline.objectives import METHODS, build_objective
from fdkd.pipeline.progress import progress_bar
from fdkd.pipeline.resume import TrainState, state_key
from fdkd.pipeline.teacher import load_teacher, teacher_path
from fdkd.pipeline.tracking import StageLog
from fdkd.pipeline.train import (
    Direction,
    eval_accuracy,
    features,
    fit,
    own_row,
    setup,
    take,
    teacher_outputs,
    tensors,
)

CACHE_DIR = "distill.teacher-cache"  # in the run directory, while the stage runs: a streamed dataset's teacher caches


class _SharedAugment:
    """A direction's augmenter shared by its ``auto`` candidates: each training batch (the same ``rows``
    tensor handed to every candidate in one step, with its features) is augmented once, so all candidates train on
    it. A step may hand out two batches (the labelled-only stream of ``none`` beside the shared one): the last two
    are kept."""

    def __init__(self, augment) -> None:
        self.augment, self.kept = augment, []

    @property
    def gen(self):
        """The augmenter's generator: its state goes into the stage's per-epoch training state."""
        return self.augment.gen

    def __call__(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for r, out in self.kept:
            if r is rows:
                return out
        out = self.augment(rows, x)
        self.kept = [*self.kept[-1:], (rows, out)]
        return out


class _Teachers:
    """Each frozen teacher loaded once, its training-row outputs computed once, shared by every candidate."""

    def __init__(self, cfg: RunConfig, ds, x, acc) -> None:
        self.cfg, self.ds, self.x, self.acc = cfg, ds, x, acc
        self.models: dict[str, object] = {}
        self.inputs: dict[tuple[str, bool], object] = {}
        self.outputs: dict[tuple[str, bool, str], tuple] = {}

    def model(self, modality: str):
        if modality not in self.models:
            teacher, _ = load_teacher(self.cfg, modality, self.ds)
            self.models[modality] = teacher.to(self.acc.device)
        return self.models[modality]

    def input(self, modality: str, shuffled: bool):
        """The teacher's input rows; shuffled: each training row replaced by another of its class (the student's
        label, or on an unlabelled row the class the teacher predicts from the row's own input)."""
        key = (modality, shuffled)
        if key not in self.inputs:
            x = self.x[modality]
            if shuffled:
                classes = self.ds.y
                if (self.ds.y[self.ds.indices("train")] < 0).any():
                    classes = self.ds.y.copy()
                    train = self.ds.indices("train")
                    predicted = self.train_outputs(modality, False)[1].argmax(1).cpu().numpy()
                    classes[train] = controls.labelled_or_predicted(self.ds.y[train], predicted)
                row_map = controls.shuffled_teacher_rows(classes, self.ds.split, self.cfg.seed)
                x = x.view(row_map) if is_streamed(x) else x[row_map]  # streamed: a lazy view, nothing decoded
            self.inputs[key] = x
        return self.inputs[key]

    def train_outputs(self, modality: str, shuffled: bool, tap: str = "post", prototype: bool = False):
        """(features, logits) of the teacher on the training rows of its (possibly shuffled) input; ``prototype``:
        each row's replaced by its teacher-predicted class's mean (``controls.class_prototypes``)."""
        key = (modality, shuffled, tap, prototype)
        if key not in self.outputs:
            if prototype:
                f, z, _ = controls.class_prototypes(*self.train_outputs(modality, shuffled, tap))
                self.outputs[key] = (f, z)
            else:
                train = self.ds.indices("train")
                x = self.input(modality, shuffled)
                out = None
                if is_streamed(x):  # the cache on disk, memory-mapped
                    out = self.cfg.run_dir / CACHE_DIR / f"{modality}{'.shuffled' if shuffled else ''}.{tap}"
                self.outputs[key] = teacher_outputs(self.model(modality), x, self.acc, tap, rows=train, out=out,
                                                    workers=self.cfg.data.workers)
        return self.outputs[key]


def _direction(cfg: RunConfig, dcfg: DistillConfig, ds, x, teachers: _Teachers, name: str, student_mod: str,
               teacher_mod: str):
    from fdkd.pipeline.models.encoders import build_encoder

    arch = arch_dict(dcfg.student, ds.x[student_mod].shape[1:], ds.num_classes, student_mod,
                     ds.frontends[student_mod])
    torch.manual_seed(cfg.seed)  # every candidate of a direction starts from the same student weights
    student = build_encoder(**arch)
    init = None
    if dcfg.student.init is not None and student_mod == cfg.student_modality:  # not the reverse student's
        from fdkd.pipeline.models.init import load_init
        from fdkd.pipeline.progress import console

        init = load_init(student, dcfg.student.init, "distill.student.init", say=console.print)
    needs_teacher = METHODS[dcfg.method].needs_teacher  # `none` trains the student alone
    ls_teacher = dcfg.label_smoothing.epsilon == "teacher"
    teacher, x_teacher, d_teacher, info = None, None, student.num_features, {}
    if init is not None:
        info["init"] = init
    if needs_teacher or ls_teacher:
        teacher = teachers.model(teacher_mod)
        x_teacher = teachers.input(teacher_mod, dcfg.teacher_shuffle)
        with torch.no_grad():
            # its width from one row of this rank's share of the teacher cache's rows (a streamed column: no rank
            # decodes another's); on a dense column the first two rows, as always
            probe = [own_row(ds.indices("train"), teachers.acc)] if is_streamed(x_teacher) else [0, 1]
            d_teacher = features(teacher, take(x_teacher, probe).to(teachers.acc.device), dcfg.feature_tap)[1].shape[1]
    objective = build_objective(dcfg.method, student.num_features, d_teacher, ds.num_classes, dcfg)
    cache = None
    if needs_teacher and dcfg.teacher_cache:
        cache = teachers.train_outputs(teacher_mod, dcfg.teacher_shuffle, dcfg.feature_tap, dcfg.teacher_prototype)
    if ls_teacher:
        _, z_t = teachers.train_outputs(teacher_mod, dcfg.teacher_shuffle)
        temperature = dcfg.label_smoothing.temperature or dcfg.kd.temperature
        eps, entropy = controls.teacher_matched_epsilon(z_t, temperature)
        objective.label_smoothing = eps
        info.update(teacher_entropy=entropy, label_smoothing_temperature=temperature)
    if objective.label_smoothing:
        info["label_smoothing"] = objective.label_smoothing
    if dcfg.teacher_shuffle and needs_teacher:
        info["teacher_shuffle"] = True
    if dcfg.teacher_prototype and needs_teacher:
        info["teacher_prototype"] = True
    if dcfg.feature_tap == "pre":
        if not hasattr(student, "forward_taps") or getattr(student, "tap_module", "") is None:
            raise ValueError(f"distill.feature_tap=pre needs the built-in conv encoder, or distill.student.tap_module "
                             f"(a module name) on {dcfg.student.arch}")
        info["feature_tap"] = "pre"
    d = Direction(name, student, objective, x[student_mod], teacher if needs_teacher else None, x_teacher, cache,
                  tap=dcfg.feature_tap)
    return d, arch, info


def _judge_right(d, val: np.ndarray, halves: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Per validation row, whether the candidate is right at the epoch the other half picked, and the two epochs:
    what ``auto.select`` compares (``auto.crossfit`` on the per-epoch correctness ``fit`` kept)."""
    right = np.stack([t[: len(val)] for t in d.tracked])
    return auto.crossfit(right, halves)


def run(cfg: RunConfig) -> tuple[Path, dict]:
    """Distill; returns (path of student.pt, metrics of every shipped student).

    ``distill.method: auto`` trains every candidate of ``distill.auto`` in one loop (same initial
    weights, same batches, one shared teacher cache; parameters are disjoint, so this is the same
    as training them one by one) and ships the best by validation accuracy, ``none`` on ties.
    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; rank 0 alone builds the data,
    writes metrics and checkpoints.
    """
    from fdkd.pipeline import accel

    setup(cfg)
    acc = accel.setup(cfg.accel)
    try:
        # first: a resumed stage says so on its first line (rank 0); every rank reads the state
        state = TrainState.open(cfg.run_dir / artifacts.TRAIN_STATE.format(stage="distill"), _state_key(cfg, acc),
                                "distill", announce=acc.is_main)
        if acc.is_main:
            data.prepare(cfg)
        acc.barrier()
        ds = data.load(cfg)
        x, y = tensors(ds)
        x = {m: t if is_streamed(t) else acc.host(t) for m, t in x.items()}
        s_mod, t_mod = cfg.student_modality, cfg.teacher.modality
        plan = [("student", s_mod, t_mod, cfg.run_dir / artifacts.STUDENT)]
        if cfg.distill.bidirectional:
            plan.append(("reverse", t_mod, s_mod, cfg.run_dir / artifacts.STUDENT_REVERSE))
        auto_mode = cfg.distill.method == "auto"
        teachers = _Teachers(cfg, ds, x, acc)
        built = []  # (plan index, candidate name, candidate config, direction, arch, info)
        for i, (name, sm, tm, _) in enumerate(plan):
            # a seed per rank and direction: ranks see different rows, and so draw different augmentations;
            # one augmenter per direction, shared by its candidates (each batch augmented once, the same for all)
            aug = student_augmenter(cfg.distill.augment, ds, sm, seed=(cfg.seed * 100 + i) * 1000 + acc.rank,
                                    image_cfg=cfg.distill.image_augment)
            shared = _SharedAugment(aug) if aug is not None else None
            for cname, dcfg in cfg.distill.runs():
                d, arch, info = _direction(cfg, dcfg, ds, x, teachers, f"{name}:{cname}" if auto_mode else name, sm, tm)
                d.augment = shared
                info["augment"] = shared is not None
                if ds.has_split("test_unseen_accent") and sm == "audio":
                    unseen = ds.indices("test_unseen_accent")
                    info["_unseen"] = unseen
                built.append((i, cname, dcfg, d, arch, info))
        band_split = None
        for *_, d, _, _ in built:
            if hasattr(d.objective, "use_band_split"):
                band_split = d.objective.use_band_split(cfg.accel.band_split, acc.device)
        log = StageLog(cfg, "distill", cfg.run_dir / artifacts.METRICS, state.records) if acc.is_main else None
        val, test = ds.indices("val"), ds.indices("test")
        track = halves = None
        if auto_mode:  # every validation row's correctness per epoch, for the cross-fitted judgement; test's beside
            track = np.concatenate([val, test])
            a, b = auto.halve_validation(ds.y, val, cfg.seed)
            halves = (np.searchsorted(val, a), np.searchsorted(val, b))
        try:
            with progress_bar() as p:
                fit([b[3] for b in built], y, ds.split, cfg.distill.optim, seed=cfg.seed,
                    teacher_cache=cfg.distill.teacher_cache, grad_norm_every=cfg.distill.grad_norm_every, log=log,
                    progress=p, description=f"distill ({cfg.distill.method})", acc=acc, track_rows=track,
                    early=cfg.distill.optim.early(cfg.data.source == "manifest"), state=state,
                    workers=cfg.data.workers)
        finally:
            if log is not None:
                log.close()
        # the training-alone baseline, from the candidates' definitions: method none and no overrides
        plain = {c.name for c in cfg.distill.auto.candidates if c.method == "none" and not c.set}
        results = {}
        for i, (name, sm, _, path) in enumerate(plan):
            cands = []
            for _, cname, dcfg, d, arch, info in (b for b in built if b[0] == i):
                extra = {k: v for k, v in info.items() if k != "_unseen"}
                if "_unseen" in info:
                    unseen = info["_unseen"]
                    extra["test_unseen_accent_acc"] = eval_accuracy(d.student, x[sm], y, unseen, acc,
                                                                    cfg.data.workers)
                if halves is not None:
                    extra["judge_right"], extra["fold_epochs"] = _judge_right(d, val, halves)
                    # test accuracy at each epoch, reported beside (the replay of auto's rules); never chosen on
                    extra["test_curve"] = [round(float(t[len(val):].mean()), 5) for t in d.tracked]
                cands.append({"name": cname, "method": dcfg.method, "plain": cname in plain, **d.best,
                              "test_acc": eval_accuracy(d.student, x[sm], y, test, acc, cfg.data.workers), **extra,
                              "_d": d, "_arch": arch})
            if auto_mode and acc.is_main:
                auto.save_rows(cfg.run_dir / auto.ROWS_FILE.format(direction=name), val, test, halves,
                               {c["name"]: np.stack(c["_d"].tracked) for c in cands})
            if auto_mode:
                chosen = auto.select([{k: v for k, v in c.items() if not k.startswith("_")} for c in cands],
                                     cfg.distill.auto.margin_se)
                win = next(c for c in cands if c["name"] == chosen["winner"])
            else:
                win, chosen = cands[0], None
            d, arch = win["_d"], win["_arch"]
            metrics = {"method": cfg.distill.method, "epoch": d.best["epoch"], "val_acc": d.best["val_acc"],
                       "world_size": acc.world, "test_acc": win["test_acc"], "training": d.training,
                       **{k: v for k, v in win.items() if k not in ("name", "method", "plain", "epoch", "val_acc",
                                                                   "test_acc", "judge_right")
                          and not k.startswith("_")}}
            if ds.labels is not None:
                metrics["labels"] = {**ds.labels, "counts": ds.label_counts()}
            if chosen:
                metrics["auto"] = chosen
            if band_split:
                metrics["band_split"] = band_split
            if acc.is_main:
                save_with_config(path, d.student, arch, cfg, ds, sm, metrics, d.objective.state_dict())
            results[name] = metrics
        acc.barrier()
        state.finish(acc.is_main)
        return plan[0][3], results
    finally:
        if acc.is_main:  # the teacher caches of a streamed dataset: memory-maps of this stage only
            shutil.rmtree(cfg.run_dir / CACHE_DIR, ignore_errors=True)
        accel.teardown(acc)


def _state_key(cfg: RunConfig, acc) -> str:
    """What distillation depends on (its resumable state must match): data, settings, seed, the teachers' files and
    the world size (each rank's share of the rows)."""
    tree = config_to_dict(cfg)
    accel_cfg = {k: v for k, v in tree["accel"].items() if k not in ("nproc", "torchrun_args")}
    tree["data"].pop("workers", None)  # how many processes decode ahead changes no number: a resume may change it
    modalities = [cfg.teacher.modality] + ([cfg.student_modality] if cfg.distill.bidirectional else [])
    teachers = [(cfg.teacher.checkpoint if m == cfg.teacher.modality and cfg.teacher.checkpoint else
                 teacher_path(cfg, m)) for m in modalities]
    return state_key({"accel": accel_cfg, **{k: tree[k] for k in ("seed", "data", "distill", "threads")}},
                     teachers, acc.world)
