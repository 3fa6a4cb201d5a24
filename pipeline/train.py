"""The training loop shared by teacher training and distillation.

Data that fits in memory (dense float32 arrays, as tensors sharing their memory) or streamed from the on-disk dataset
(``fdkd.pipeline.data.rows.StreamRows``: each epoch's batches decoded ahead in ``workers`` DataLoader processes, in
order, training views giving each (seed, epoch, row) its random crop; validation, tracking and the teacher cache in
bounded chunks, never a whole split at once), seeded shuffling,
SGD with momentum or AdamW (``optim.name``), a linear warmup then polynomial or cosine learning-rate decay
(``optim.schedule``), per-student gradient clipping and gradient accumulation, per-term loss and gradient-norm
logging, checkpoint selection on the **validation** split with the student's own head (of the weights'
moving average instead where ``optim.ema_decay`` is set: ``fdkd.pipeline.ema``).

How long it trains (``Budget``): a fixed number of epochs, or a step budget with early stopping on validation
(``optim.stop``; why it stopped goes into each direction's ``training`` record). After every epoch the whole
loop state (weights, optimizers, loss scalers, weight averages, RNG states, the sampler's generators, the best
state so far, the records) can be written (``capture``) and read back (``restore``) by ``fdkd.pipeline.resume``:
a stage killed mid-training resumes from its last epoch, bit for bit at one thread.

The frozen teacher's features and logits are computed once per training sample and reused
every epoch (``teacher_cache``; ``teacher_outputs`` writes them to a memory-mapped file when its input streams),
since nothing about them changes; ``teacher_cache=False`` runs
the teacher every step, the way the reference code does (kept for the speed benchmark).
Directions that share a teacher and its input (``method: auto``'s candidates) share one cache.
A direction's ``augment`` (``fdkd.pipeline.augment``) replaces its student's training batches with
freshly augmented ones; validation always reads the un-augmented ``x_student``.
Devices, AMP and torchrun processes come from ``fdkd.pipeline.accel``.

What a training stage (teacher, distill) does around the loop is here too: ``setup`` (seed and threads),
``tensors`` (the dataset as tensors) and ``reset_log`` (its ``metrics.jsonl`` writer).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fdkd import artifacts
from fdkd.pipeline.accel import Accel, nhwc_hazard
from fdkd.pipeline.config import OptimConfig, RunConfig
from fdkd.pipeline.data.rows import StreamRows, is_streamed
from fdkd.pipeline.ema import WeightAverage
from fdkd.pipeline.objectives import Objective
from fdkd.row_features import chunk_size

EVAL_BATCH = 512  # rows per eval-mode batch, at most: fewer where a row is large (``eval_batch``)


def eval_batch(x) -> int:
    """Rows per eval-mode batch of ``x``: ``EVAL_BATCH``, fewer where that many rows' input would pass
    ``fdkd.row_features.CHUNK_BYTES`` (16 MB: a batch of 512 RGB images at 224x224 is 308 MB of input and gigabytes
    of activations; the main job's 16 KB rows stay at 512, so its numbers do not move). The same bound as the
    export, calibration and validation stages' model calls (``row_features.chunk_size``)."""
    return chunk_size(x, EVAL_BATCH)


def setup(cfg: RunConfig) -> None:
    """A training stage's start: ``threads`` torch threads (if set), torch and numpy seeded with ``seed``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)


def tensors(ds) -> tuple[dict[str, torch.Tensor | StreamRows], torch.Tensor]:
    """The dataset's inputs per modality and its (student) labels as tensors, sharing the arrays' memory; a streamed
    column (``StreamRows``) stays as it is (its rows are decoded batch by batch)."""
    return {m: a if is_streamed(a) else torch.from_numpy(a) for m, a in ds.x.items()}, torch.from_numpy(ds.y)


def take(x: torch.Tensor | StreamRows, rows) -> torch.Tensor:
    """``x[rows]`` as a tensor: a dense column's rows gathered, a streamed column's decoded (keep ``rows`` to a batch
    or a chunk there)."""
    return torch.from_numpy(x[rows]) if is_streamed(x) else x[rows]


def reset_log(path: Path, keep: list[dict] = ()):
    """A metrics.jsonl writer starting from a file holding ``keep`` only (a resumed stage's earlier epochs)."""
    import json

    artifacts.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
    return lambda rec: artifacts.append_jsonl(path, rec)


@dataclass
class Direction:
    """One student trained against one (optional) frozen teacher."""

    name: str
    student: nn.Module
    objective: Objective
    x_student: torch.Tensor | StreamRows  # all rows, student modality
    teacher: nn.Module | None = None
    x_teacher: torch.Tensor | StreamRows | None = None  # all rows, teacher modality
    cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (features, logits) for the train rows
    tap: str = "post"  # "pre": the objective sees pooled pre-activation features (conv encoders)
    # (train rows, their clean student features) -> augmented student batch
    augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    best_state: dict | None = None
    best: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # how long it trained and why it stopped (``Budget.record``)
    # per epoch, whether the student (its weight average where there is one) is right on each of fit's
    # ``track_rows``: what ``method: auto`` cross-fits its judgement from (fdkd.pipeline.auto.crossfit)
    tracked: list = field(default_factory=list)


def features(model: nn.Module, x: torch.Tensor, tap: str = "post") -> tuple[torch.Tensor, torch.Tensor]:
    """(features feeding the head, features the objective compares): the same tensor unless ``tap`` is "pre"."""
    if tap == "post":
        f = model.forward_features(x)
        return f, f
    if not hasattr(model, "forward_taps"):
        raise ValueError(f"distill.feature_tap=pre needs the built-in conv encoder; {type(model).__name__} has no "
                         "pre-activation tap")
    return model.forward_taps(x)


@torch.no_grad()
def predict(model: nn.Module, x, with_features: bool = False, tap: str = "post", rows=None, workers: int = 0):
    """Batched eval-mode forward: logits [N, C] (and the ``tap`` features [N, D]) of ``x[rows]`` (every row of
    ``x`` without ``rows``). ``x``: a tensor, or a ``StreamRows`` whose rows are decoded one batch of ``eval_batch(x)``
    at a time (ahead, in ``workers`` DataLoader processes): the same batches either way, so the same numbers."""
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    feats, logits = [], []
    if is_streamed(x):
        idx = np.arange(len(x), dtype=np.int64) if rows is None else _row_array(rows)
        b = eval_batch(x)
        parts = (torch.from_numpy(p) for p in x.batches([idx[s : s + b] for s in range(0, len(idx), b)], workers))
    else:
        x = x if rows is None else x[rows]
        b = eval_batch(x)
        parts = (x[s : s + b] for s in range(0, len(x), b))
    for part in parts:
        f_head, f = features(model, part.to(device), tap)
        feats.append(f)
        logits.append(model.forward_head(f_head))
    z = torch.cat(logits)
    return (torch.cat(feats), z) if with_features else z


def _row_array(rows) -> np.ndarray:
    """Row numbers (a tensor, array or list) as int64 numpy."""
    if isinstance(rows, torch.Tensor):
        return rows.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(rows, np.int64).reshape(-1)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def poly_lr(opt: OptimConfig, step: int, total: int) -> float:
    return (opt.lr - opt.final_lr) * (1 - step / total) ** opt.poly_power + opt.final_lr


def lr_at(opt: OptimConfig, step: int, total: int, warmup: int = 0) -> float:
    """The learning rate of optimizer step ``step`` of ``total``: ``warmup`` steps rising linearly to ``opt.lr``,
    then ``opt.schedule`` (poly or cosine) from ``opt.lr`` down to ``opt.final_lr`` over the remaining steps.
    Without a warmup, poly is exactly ``poly_lr`` (the built-in run's numerics)."""
    if step < warmup:
        return opt.lr * (step + 1) / warmup
    step, total = step - warmup, total - warmup
    if opt.schedule == "cosine":
        return opt.final_lr + (opt.lr - opt.final_lr) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    return poly_lr(opt, step, total)


def make_optimizer(opt: OptimConfig, params) -> torch.optim.Optimizer:
    """``optim.name``: SGD with momentum and L2 weight decay, or AdamW (decoupled weight decay)."""
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


@dataclass
class Budget:
    """How many epochs a training run plans, and when it stops.

    ``optim.stop`` "epochs": exactly ``optim.epochs``. "early": ``min(max_epochs, ceil(max_steps / optimizer steps
    per epoch))`` epochs planned (the learning-rate schedule spans them), stopping after an epoch once every
    direction has gone ``patience`` epochs without a new best validation accuracy, never before ``min_epochs``.
    """

    epochs: int
    steps_per_epoch: int
    early: bool
    opt: OptimConfig

    @classmethod
    def plan(cls, opt: OptimConfig, steps_per_epoch: int, early: bool) -> Budget:
        if not early:
            return cls(opt.epochs, steps_per_epoch, False, opt)
        epochs = opt.max_epochs
        if opt.max_steps is not None:
            epochs = min(epochs, max(1, math.ceil(opt.max_steps / steps_per_epoch)))
        return cls(max(epochs, min(opt.min_epochs, opt.max_epochs)), steps_per_epoch, True, opt)

    def stalled(self, directions: list[Direction], epoch: int) -> bool:
        """After ``epoch`` (0-based): early stopping, every direction ``patience`` epochs past its best."""
        o = self.opt
        return (self.early and o.patience is not None and epoch + 1 >= o.min_epochs
                and all(epoch - d.best["epoch"] >= o.patience for d in directions))

    def record(self, epochs_run: int, stalled: bool, resumed_from: int | None) -> dict:
        """Each direction's ``training`` record: epochs and steps run, and why training stopped."""
        o = self.opt
        if stalled:
            stop, why = "early", (f"early stopping: no student's validation accuracy rose in the last {o.patience} "
                                  f"epochs (optim.patience), after epoch {epochs_run} of {self.epochs} planned")
        elif not self.early:
            stop, why = "epochs", f"fixed budget: {self.epochs} epochs (optim.epochs; optim.stop={o.stop})"
        else:
            bound = ("optim.max_epochs" if o.max_steps is None or self.epochs * self.steps_per_epoch < o.max_steps
                     else f"optim.max_steps={o.max_steps} at {self.steps_per_epoch} optimizer steps per epoch")
            stop, why = "budget", f"budget: all {self.epochs} planned epochs ({bound}) ran without early stopping"
        rec = {"stop": stop, "stopped": why, "epochs_run": epochs_run, "epochs_planned": self.epochs,
               "steps": epochs_run * self.steps_per_epoch, "optimizer": o.name, "schedule": o.schedule}
        if resumed_from is not None:
            rec["resumed_from_epoch"] = resumed_from
        return rec


class Joint(nn.Module):
    """Every trainable part (students and objectives) as one module, so DDP can wrap it whole.

    The students run under autocast (AMP on CUDA); their features and logits are cast back to
    float32 before the objectives, so loss terms are always computed in full precision. A
    ``self_teacher`` objective (self-training) gets the student's own logits on the clean view of the
    batch (``weak``), computed without gradient in train mode, in the teacher's place.
    """

    def __init__(self, directions: list[Direction]) -> None:
        super().__init__()
        self.students = nn.ModuleList([d.student for d in directions])
        self.objectives = nn.ModuleList([d.objective for d in directions])
        self.taps = [d.tap for d in directions]

    def forward(self, xs, teacher_outs, ys, epoch: int, amp_dtype=None, weak=None):
        out = []
        weak = weak or [None] * len(xs)
        for student, objective, tap, x, (f_t, z_t), y, x_weak in zip(self.students, self.objectives, self.taps, xs,
                                                                     teacher_outs, ys, weak, strict=True):
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if x_weak is not None:
                    with torch.no_grad():
                        f_w, _ = features(student, x_weak, tap)
                        z_t = student.forward_head(f_w).float()
                f_head, f_s = features(student, x, tap)
                z_s = student.forward_head(f_head)
            f_s, z_s = f_s.float(), z_s.float()
            out.append((f_s, z_s, objective(f_s, z_s, f_t, z_t, y, epoch)))
        return out


def teacher_outputs(teacher: nn.Module, x, acc: Accel, tap: str = "post", rows=None, out: Path | None = None,
                    workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher (features, logits) for ``x[rows]`` (every row of ``x`` without ``rows``): each rank computes one
    contiguous shard once, in batches of ``eval_batch(x)``, then every rank holds the full cache.

    Dense ``x``: all ranks gather it into memory (equal-size shards, padded, for all_gather). A streamed ``x``
    (``StreamRows``) with ``out`` (a path prefix in the stage's folder): each rank writes its shard into
    ``<out>.features.npy`` and ``<out>.logits.npy`` (numpy memory-maps, on the file system every rank shares, as the
    training state is) and every rank reads them back memory-mapped: the cache is never whole in memory."""
    rows = None if rows is None else _row_array(rows)
    n = len(x) if rows is None else len(rows)
    per = math.ceil(n / acc.world)
    lo, hi = min(n, acc.rank * per), min(n, (acc.rank + 1) * per)
    if is_streamed(x):
        mine = np.arange(lo, hi, dtype=np.int64) if rows is None else rows[lo:hi]
        if out is not None:
            return _memmap_outputs(teacher, x, mine, lo, n, acc, tap, Path(out), workers)
        f, z = _shard_outputs(teacher, x, mine, tap, workers)
    else:
        x = x if rows is None else x[torch.from_numpy(rows)]
        if hi > lo:
            f, z = predict(teacher, x[lo:hi], with_features=True, tap=tap)  # predict moves each chunk to the device
        else:  # fewer rows than ranks: this rank's shard is empty (shapes from one row)
            f, z = (t[:0] for t in predict(teacher, x[:1], with_features=True, tap=tap))
    if not acc.distributed:
        return f, z
    pad = per - (hi - lo)
    f, z = nn.functional.pad(f, (0, 0, 0, pad)), nn.functional.pad(z, (0, 0, 0, pad))
    fs, zs = [torch.empty_like(f) for _ in range(acc.world)], [torch.empty_like(z) for _ in range(acc.world)]
    torch.distributed.all_gather(fs, f.contiguous())
    torch.distributed.all_gather(zs, z.contiguous())
    return torch.cat(fs)[:n], torch.cat(zs)[:n]


def own_row(rows, acc: Accel) -> int:
    """The first of this rank's contiguous share of ``rows`` (``teacher_outputs``' split; the last row where the share
    is empty): the row a rank probes shapes with, so that no rank decodes another's part."""
    rows = _row_array(rows)
    per = math.ceil(len(rows) / acc.world)
    return int(rows[min(acc.rank * per, len(rows) - 1)])


def _shard_outputs(teacher: nn.Module, x: StreamRows, rows: np.ndarray, tap: str,
                   workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of a streamed shard; an empty shard gives empty tensors shaped from the last row."""
    if len(rows):
        return predict(teacher, x, with_features=True, tap=tap, rows=rows, workers=workers)
    return tuple(t[:0] for t in predict(teacher, x, with_features=True, tap=tap, rows=[len(x) - 1]))


def _memmap_outputs(teacher: nn.Module, x: StreamRows, rows: np.ndarray, lo: int, n: int, acc: Accel, tap: str,
                    out: Path, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``teacher_outputs`` of a streamed column into two memory-mapped ``.npy`` files: rank 0 creates them (shapes
    from one row every rank probes), each rank fills its rows [lo, lo + len(rows)) batch by batch, and after a
    barrier every rank maps them copy-on-write (read from disk on demand; nothing is ever written back)."""
    from numpy.lib.format import open_memmap

    probe = rows[:1] if len(rows) else [len(x) - 1]  # shapes from this rank's own first row
    f0, z0 = (t.cpu().numpy() for t in predict(teacher, x, with_features=True, tap=tap, rows=probe))
    paths = (out.parent / f"{out.name}.features.npy", out.parent / f"{out.name}.logits.npy")
    if acc.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, one in zip(paths, (f0, z0), strict=True):
            open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *one.shape[1:])).flush()
    acc.barrier()
    if len(rows):
        maps = [open_memmap(path, mode="r+") for path in paths]
        pos = lo
        b = eval_batch(x)
        parts = x.batches([rows[s : s + b] for s in range(0, len(rows), b)], workers)
        teacher.eval()
        device = next(iter(teacher.parameters()), torch.empty(0)).device
        with torch.no_grad():
            for part in parts:
                f_head, f = features(teacher, torch.from_numpy(part).to(device), tap)
                z = teacher.forward_head(f_head)
                maps[0][pos : pos + len(part)] = f.float().cpu().numpy()
                maps[1][pos : pos + len(part)] = z.float().cpu().numpy()
                pos += len(part)
        for m in maps:
            m.flush()
        del maps
    acc.barrier()
    return tuple(torch.from_numpy(np.load(path, mmap_mode="c")) for path in paths)


def _val_accuracy(student: nn.Module, x, y: torch.Tensor, acc: Accel, workers: int = 0) -> float:
    """Validation accuracy of ``x`` (the validation rows: a tensor or a streamed view) against ``y``, each rank
    evaluating every world-th row, gathered with all_reduce."""
    rows = torch.arange(acc.rank, len(x), acc.world)
    z = predict(student, x, rows=rows, workers=workers) if len(rows) else torch.zeros(0, 1, device=acc.device)
    counts = torch.tensor([float((z.argmax(1).cpu() == y[rows]).sum()) if len(rows) else 0.0, float(len(rows))],
                          device=acc.device)
    if acc.distributed:
        torch.distributed.all_reduce(counts)
    return float(counts[0] / counts[1])


def subset(x, rows):
    """The rows ``rows`` of a column: gathered (a tensor) or a lazy view (a ``StreamRows``)."""
    return x.view(_row_array(rows)) if is_streamed(x) else x[rows]


def eval_accuracy(model: nn.Module, x, y: torch.Tensor, rows, acc: Accel | None = None, workers: int = 0) -> float:
    """Accuracy on ``x[rows]`` against ``y[rows]`` in eval batches (a streamed column decoded batch by batch); under
    torchrun each rank evaluates every world-th row and the counts are summed."""
    rows = torch.as_tensor(_row_array(rows))
    if acc is None or not acc.distributed:
        return accuracy(predict(model, x, rows=rows, workers=workers), y[rows])
    return _val_accuracy(model, subset(x, rows), y[rows], acc, workers)


def batch_bounds(n: int, batch: int) -> list[tuple[int, int]]:
    """[start, end) of each step's rows among ``n``: ``batch`` at a time, a last batch of one row
    joined to the one before (BatchNorm cannot train on a single row with 1x1 features)."""
    bounds = [(i, min(i + batch, n)) for i in range(0, n, batch)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _inputs(directions: list[Direction], batches: list[tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor,
            acc: Accel, augment: bool = False, fetched: list | None = None):
    """Per direction, its batch on the device: (student inputs, (cached or computed) teacher outputs, labels, the
    clean student inputs for a ``self_teacher`` objective or None). ``batches[i]`` = (dataset rows, their positions
    among the training rows: the teacher cache's index) of direction i.

    ``augment``: a direction's ``augment`` (training batches only) replaces its student inputs with an augmented copy
    of them. ``fetched[i]``: direction i's (student, teacher input) batches already decoded (``_Feed``: a streamed
    column), either None where the column is read here (``take``).
    """
    xs, touts, ys, weak = [], [], [], []
    for i, (d, (rows, local)) in enumerate(zip(directions, batches, strict=True)):
        x_s, x_t = fetched[i] if fetched is not None else (None, None)
        clean = x_s if x_s is not None else take(d.x_student, rows)
        xs.append(acc.batch(d.augment(rows, clean) if augment and d.augment is not None else clean))
        ys.append(acc.batch(y[rows]))
        weak.append(acc.batch(clean) if d.objective.self_teacher else None)
        f_t = z_t = None
        if d.objective.needs_teacher:
            if d.cache is not None:
                cf, cz = d.cache
                where = local.to(cf.device)  # on the device (dense), or on the host (a memory-mapped cache)
                f_t, z_t = cf[where], cz[where]
                if f_t.device != acc.device:
                    f_t, z_t = acc.batch(f_t), acc.batch(z_t)
            else:
                x_t = x_t if x_t is not None else take(d.x_teacher, rows)
                with torch.no_grad():
                    f_head_t, f_t = features(d.teacher, acc.batch(x_t), d.tap)
                    z_t = d.teacher.forward_head(f_head_t)
        touts.append((f_t, z_t))
    return xs, touts, ys, weak


class _Feed:
    """One epoch's streamed inputs, step by step. Each distinct (streamed column, row stream) a direction reads (the
    student's training view, with this epoch's random crops; the teacher's input where there is no cache) gets its
    own ``StreamRows.batches`` over every step's rows, decoded ahead in ``workers`` DataLoader processes; directions
    that read the same column and stream (``auto``'s candidates) share its batches. Dense columns are not fed here.
    """

    def __init__(self, loop: _Loop, steps: list[list[tuple[torch.Tensor, torch.Tensor]]], epoch: int,
                 labelled_stream: bool) -> None:
        self.iters: dict[tuple, object] = {}
        self.keys: list[tuple[tuple | None, tuple | None]] = []
        for i, d in enumerate(loop.directions):
            own = labelled_stream and loop.streams.own[i]  # _batches: the labelled batch, else the shared one
            ks = kt = None
            if is_streamed(d.x_student):
                ks = ("student", id(d.x_student), own)
                if ks not in self.iters:
                    view = d.x_student.training(loop.seed, epoch)
                    self.iters[ks] = view.batches([step[i][0] for step in steps], loop.workers)
            if d.objective.needs_teacher and d.cache is None and is_streamed(d.x_teacher):
                kt = ("teacher", id(d.x_teacher), own)  # the teacher's input as its cache would see it: no crop
                if kt not in self.iters:
                    self.iters[kt] = d.x_teacher.batches([step[i][0] for step in steps], loop.workers)
            self.keys.append((ks, kt))

    def next(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]] | None:
        """This step's batches per direction (None where nothing streams)."""
        if not self.iters:
            return None
        now = {k: torch.from_numpy(next(it)) for k, it in self.iters.items()}
        return [(now.get(ks), now.get(kt)) for ks, kt in self.keys]


class _Streams:
    """Which training rows each direction sees at each step.

    Every direction shares one seeded permutation of the training rows per epoch. When some training rows are
    unlabelled, a second stream walks seeded permutations of the labelled rows only, back to back, for as many
    steps of the same size (its own generator, so the shared permutation stays what it is without it): a
    ``labelled_only`` objective (``none``) trains on that stream's batch alone; every other direction on the
    shared batch *and* that labelled batch together (FixMatch's labelled + unlabelled batches). Without the
    labelled batch the cross-entropy of a step would average the few labelled rows the shared batch happens to
    hold (3 of 64 at 5 % labels): its noise drowned the teacher's terms, and at 5 % labels on avdigits
    pseudo-labels as good as the true ones left the student near chance.
    """

    def __init__(self, directions: list[Direction], train_idx: torch.Tensor, y: torch.Tensor, seed: int,
                 acc: Accel) -> None:
        labelled = y[train_idx] >= 0
        self.partial = not bool(labelled.all())
        self.own = [self.partial and d.objective.labelled_only for d in directions]
        self.labelled_pos = torch.from_numpy(np.flatnonzero(labelled.numpy()))
        if any(self.own) and len(self.labelled_pos) == 0:
            names = ", ".join(d.name for d, own in zip(directions, self.own, strict=True) if own)
            raise ValueError(f"{names}: method none trains on labelled pairs, and the training split has none "
                             "(every label is empty)")
        self.gen = torch.Generator().manual_seed(seed + 0x1ABE1)
        self.n, self.acc = len(train_idx), acc

    def epoch(self, perm: torch.Tensor, shard: int) -> torch.Tensor | None:
        """This epoch's positions (among the training rows) for the labelled-only directions, sharded like ``perm``."""
        k = len(self.labelled_pos)
        if not self.partial or k == 0:  # every row labelled, or none (a loaded teacher's terms alone)
            return None
        seq = torch.cat([torch.randperm(k, generator=self.gen) for _ in range(math.ceil(self.n / k))])[: self.n]
        lperm = self.labelled_pos[seq]
        if self.acc.distributed:
            lperm = torch.cat([lperm, lperm[: shard * self.acc.world - len(lperm)]])[self.acc.rank :: self.acc.world]
        return lperm


def unused_parameters(joint: Joint, directions: list[Direction], train_idx: torch.Tensor, y: torch.Tensor,
                      acc: Accel) -> list[str]:
    """Names of trainable parameters the summed loss does not reach (e.g. ``fd.shared_classifier=false``
    leaves the shared classifiers idle). DistributedDataParallel must be told about them
    (``find_unused_parameters``) or it stops at the second step. Probed on two training rows in eval
    mode (of this rank's stride of them): no BatchNorm statistics move and no gradient is stored."""
    local = torch.arange(acc.rank, len(train_idx), acc.world)[:2]  # this rank's own rows: no rank reads another's
    rows = train_idx[local]
    xs, touts, ys, weak = _inputs(directions, [(rows, local)] * len(directions), y, acc)
    joint.eval()
    try:
        results = joint(xs, touts, ys, 0, acc.amp_dtype, weak)
        total = sum(w * v for _, _, terms in results for w, v in terms.values())
        named = [(n, p) for n, p in joint.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    finally:
        joint.train()
    return [n for (n, _), g in zip(named, grads, strict=True) if g is None]


@dataclass
class _Loop:
    """What every epoch of ``fit`` reads, built once before the first (``_prepare``)."""

    directions: list[Direction]
    y: torch.Tensor
    opt: OptimConfig
    acc: Accel
    joint: Joint
    model: nn.Module  # ``joint``, wrapped in DistributedDataParallel and/or torch.compile where asked
    sgds: list[torch.optim.Optimizer]  # one, or under fp16 AMP one per direction (SGD or AdamW: optim.name)
    scalers: list | None  # fp16 AMP: one loss scaler per direction; else None
    averages: list[WeightAverage | None]  # each direction's weight average (optim.ema_decay), or None
    train_idx: torch.Tensor
    streams: _Streams
    gen: torch.Generator  # each epoch's permutation of the training rows
    shard: int  # training rows per rank
    bounds: list[tuple[int, int]]  # each step's [start, end) in the rank's shard
    total_steps: int  # optimizer steps planned (``fit`` sets it from the budget)
    grad_norm_every: int
    zero: torch.Tensor  # float64 0 on the device: the running sums start from it
    accum: int = 1  # batches per optimizer step (optim.grad_accum_steps)
    warmup: int = 0  # optimizer steps of linear warmup
    step: int = 0  # optimizer steps taken
    seed: int = 0  # a streamed training view's random crops: a function of (seed, epoch, row)
    workers: int = 0  # DataLoader processes decoding a streamed column's batches ahead

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.bounds) / self.accum)


def _prepare(directions: list[Direction], y: torch.Tensor, train_idx: torch.Tensor, opt: OptimConfig,
             gen: torch.Generator, *, seed: int, teacher_cache: bool, grad_norm_every: int, acc: Accel,
             workers: int = 0) -> _Loop:
    """Everything before the first epoch: the row streams, models on the device (in NHWC where asked and safe), the
    teacher caches, the joint model (DDP, compile), optimizers and loss scalers, weight averages, the steps."""
    streams = _Streams(directions, train_idx, y, seed, acc)
    for d in directions:
        d.objective.partial_labels = streams.partial
    if acc.channels_last and acc.device.type == "cpu":
        hazards = [(d.name, h) for d in directions if (h := nhwc_hazard(d.student))]
        if hazards:  # a oneDNN defect (fdkd.pipeline.accel.nhwc_hazard): the whole loop trains in NCHW
            acc = dataclasses.replace(acc, channels_last=False)
            if acc.is_main:
                from fdkd.pipeline.progress import console

                console.print(f"channels_last off on this CPU: {hazards[0][0]}'s layer {hazards[0][1]} would hit "
                              "a oneDNN NHWC defect", highlight=False, markup=False)
    caches: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # one per (teacher, teacher input)
    for d in directions:
        d.student.to(acc.device)
        d.objective.to(acc.device)
        if acc.channels_last:
            d.student.to(memory_format=torch.channels_last)
        if d.teacher is not None:
            d.teacher.to(acc.device).eval()  # frozen by the caller (fdkd.pipeline.teacher.freeze)
            if teacher_cache and d.objective.needs_teacher and d.cache is None:
                key = (id(d.teacher), id(d.x_teacher), d.tap)
                if key not in caches:
                    caches[key] = teacher_outputs(d.teacher, d.x_teacher, acc, d.tap, rows=train_idx,
                                                  workers=workers)
                d.cache = caches[key]
    joint = Joint(directions)
    model = joint
    if acc.distributed:
        from torch.nn.parallel import DistributedDataParallel

        unused = unused_parameters(joint, directions, train_idx, y, acc)
        if unused and acc.is_main:
            from fdkd.pipeline.progress import console

            names = ", ".join(unused[:4]) + (", ..." if len(unused) > 4 else "")
            console.print(f"{len(unused)} parameter(s) unused by the loss ({names}): DDP finds unused parameters",
                          highlight=False, markup=False)
        model = DistributedDataParallel(joint, device_ids=[acc.device.index] if acc.device.type == "cuda" else None,
                                        find_unused_parameters=bool(unused))
    if acc.compile:
        model = torch.compile(model)

    def sgd_of(params):
        return make_optimizer(opt, params)

    # fp16 AMP: one optimizer and one loss scaler per direction (their parameters are disjoint), so an inf
    # in one candidate skips that candidate's step and lowers its scale only, as if trained on its own
    scalers = None
    if acc.amp_dtype == torch.float16:
        sgds = [sgd_of([p for m in (d.student, d.objective) for p in m.parameters() if p.requires_grad])
                for d in directions]
        scalers = [torch.amp.GradScaler(acc.device.type) for _ in directions]
    else:
        sgds = [sgd_of([p for p in joint.parameters() if p.requires_grad])]
    # optim.ema_decay: validation, checkpoint selection and the shipped weights use each student's weight average
    averages = [WeightAverage(d.student, opt.ema_decay) if opt.ema_decay is not None else None for d in directions]
    per_rank_batch = max(1, opt.batch_size // acc.world)
    shard = math.ceil(len(train_idx) / acc.world)
    bounds = batch_bounds(shard, per_rank_batch)  # the same on every rank: equal shards
    loop = _Loop(directions, y, opt, acc, joint, model, sgds, scalers, averages, train_idx, streams, gen, shard,
                 bounds, opt.epochs * len(bounds), grad_norm_every,
                 torch.zeros((), dtype=torch.float64, device=acc.device), accum=opt.grad_accum_steps, seed=seed,
                 workers=workers)
    loop.warmup = round(opt.warmup_epochs * loop.steps_per_epoch)
    return loop


@dataclass
class _EpochSums:
    """One epoch's running sums per direction name. They stay on the device (float64, as the Python floats they
    replace) until ``record`` reads them: one read per epoch."""

    sums: dict[str, dict[str, torch.Tensor]]  # loss term -> sum over rows of its value
    norms: dict[str, dict[str, list[torch.Tensor]]]  # loss term -> its gradient norm at each probed step
    correct: dict[str, torch.Tensor]
    counted: dict[str, torch.Tensor]  # training rows that count for accuracy (the labelled ones)
    seen: int = 0
    lr: float = 0.0  # the last step's
    seconds: float = 0.0

    def record(self, d: Direction, epoch: int, val_acc: float, world: int, ema: bool) -> dict:
        """The direction's line of ``metrics.jsonl`` for this epoch."""
        rec = {"epoch": epoch, "direction": d.name, "lr": self.lr, "epoch_seconds": round(self.seconds, 4),
               "train_acc": float(self.correct[d.name]) / max(float(self.counted[d.name]), 1), "val_acc": val_acc,
               "world_size": world}
        if ema:
            rec["val_of"] = "ema"
        for name, s in self.sums[d.name].items():
            rec[f"loss/{name}"] = float(s) / max(self.seen, 1)
        for name, vals in self.norms[d.name].items():
            rec[f"grad_norm/{name}"] = float(torch.stack(vals).mean())
        return rec


def _batches(loop: _Loop, perm: torch.Tensor, lperm: torch.Tensor | None, lo: int, hi: int):
    """Per direction, one step's (dataset rows, their positions among the training rows): positions lo..hi of the
    shared permutation; where some rows are unlabelled (``_Streams``), ``none`` gets the labelled stream's batch and
    every other direction both batches together."""
    local = perm[lo:hi]
    shared = (loop.train_idx[local], local)
    if lperm is None:
        return [shared] * len(loop.directions)
    lloc = lperm[lo:hi]
    labelled = (loop.train_idx[lloc], lloc)
    both = (torch.cat([shared[0], labelled[0]]), torch.cat([local, lloc]))
    return [labelled if own else both for own in loop.streams.own]


def _backward(loop: _Loop, losses: list[torch.Tensor], group: int) -> None:
    """Backward through the summed losses into the accumulated gradients (fp16 AMP: each direction's loss scaled by
    its own scaler); ``group`` batches share one optimizer step, so each loss counts 1/group of it."""
    if group > 1:  # never divides when there is no accumulation: the built-in run's numerics stay as they were
        losses = [loss / group for loss in losses]
    if loop.scalers is not None:
        sum(sc.scale(loss) for sc, loss in zip(loop.scalers, losses, strict=True)).backward()
    else:
        sum(losses).backward()


def _clip(loop: _Loop) -> None:
    """``optim.clip_grad_norm``: each direction's gradient (its student's and objective's parameters) clipped on its
    own, so one candidate's large gradients never shrink another's (they train as if alone)."""
    if loop.opt.clip_grad_norm is None:
        return
    if loop.scalers is not None:
        for sc, sgd in zip(loop.scalers, loop.sgds, strict=True):
            sc.unscale_(sgd)
    for d in loop.directions:
        params = [p for m in (d.student, d.objective) for p in m.parameters() if p.grad is not None]
        if params:
            nn.utils.clip_grad_norm_(params, loop.opt.clip_grad_norm)


def _step(loop: _Loop) -> None:
    """One optimizer step on the accumulated gradients (clipped where asked; fp16 AMP: one scaler step per
    direction), gradients cleared for the next step, then each weight average follows its student."""
    _clip(loop)
    if loop.scalers is not None:
        for sc, sgd in zip(loop.scalers, loop.sgds, strict=True):
            sc.step(sgd)
            sc.update()
    else:
        loop.sgds[0].step()
    for sgd in loop.sgds:
        sgd.zero_grad(set_to_none=True)
    for d, avg in zip(loop.directions, loop.averages, strict=True):
        if avg is not None:
            avg.update(d.student)


def _train_epoch(loop: _Loop, epoch: int) -> _EpochSums:
    """One pass over the training rows, every direction on its batch of each step: the seeded permutation (sharded
    across ranks), the learning rate of the step, the forward of the joint model, the running sums (gradient norms
    of the loss terms on the student's features every ``grad_norm_every`` steps), the optimizer step."""
    directions, acc, zero = loop.directions, loop.acc, loop.zero
    t0 = time.perf_counter()
    loop.joint.train()
    perm = torch.randperm(len(loop.train_idx), generator=loop.gen)
    if acc.distributed:  # same permutation on every rank; rank r takes every world-th position
        perm = torch.cat([perm, perm[: loop.shard * acc.world - len(perm)]])[acc.rank :: acc.world]
    lperm = loop.streams.epoch(perm, loop.shard)
    steps = [_batches(loop, perm, lperm, lo, hi) for lo, hi in loop.bounds]  # index tensors only
    feed = _Feed(loop, steps, epoch, lperm is not None)
    ep = _EpochSums(sums={d.name: {} for d in directions}, norms={d.name: {} for d in directions},
                    correct={d.name: zero.clone() for d in directions},
                    counted={d.name: zero.clone() for d in directions})
    for sgd in loop.sgds:
        sgd.zero_grad(set_to_none=True)
    for b, (lo, hi) in enumerate(loop.bounds):
        batches = steps[b]
        first = b - b % loop.accum  # this accumulation group's first batch
        group = min(loop.accum, len(loop.bounds) - first)
        if b == first:
            ep.lr = lr = lr_at(loop.opt, loop.step, loop.total_steps, loop.warmup)
            for g in (g for sgd in loop.sgds for g in sgd.param_groups):
                g["lr"] = lr
        probe = loop.grad_norm_every > 0 and b % loop.grad_norm_every == 0
        xs, touts, ys, weak = _inputs(directions, batches, loop.y, acc, augment=True, fetched=feed.next())
        results = loop.model(xs, touts, ys, epoch, acc.amp_dtype, weak)
        losses = []
        n = hi - lo
        for d, (f_s, z_s, terms), yb in zip(directions, results, ys, strict=True):
            sums, norms = ep.sums[d.name], ep.norms[d.name]
            for name, (w, v) in terms.items():
                sums[name] = sums.get(name, zero) + v.detach().double() * n
                if probe and w != 0 and v.requires_grad:
                    (g,) = torch.autograd.grad(w * v, f_s, retain_graph=True, allow_unused=True)
                    norms.setdefault(name, []).append(zero if g is None else g.norm().double())
            ep.correct[d.name] += (z_s.detach().argmax(1) == yb).sum()
            ep.counted[d.name] += (yb >= 0).sum() if loop.streams.partial else n
            losses.append(sum(w * v for w, v in terms.values()))
        ep.seen += n
        _backward(loop, losses, group)
        if b == first + group - 1:
            _step(loop)
            loop.step += 1
    ep.seconds = time.perf_counter() - t0
    return ep


def _tracked_rest(val_idx: torch.Tensor, track_idx: torch.Tensor | None,
                  acc: Accel) -> tuple[bool, torch.Tensor | None]:
    """(whether the tracked rows open with the validation rows, so one prediction serves both; the tracked rows still
    to predict after validation)."""
    if track_idx is None:
        return False, None
    n_val = len(val_idx)
    shared = (not acc.distributed and len(track_idx) >= n_val and bool((track_idx[:n_val] == val_idx).all()))
    return shared, track_idx[n_val:] if shared else track_idx


@torch.no_grad()
def _predict_many(models: list[nn.Module], x: StreamRows, rows, workers: int) -> list[torch.Tensor]:
    """``predict``'s logits of each of ``models`` on ``x[rows]``, each eval batch decoded once for all of them."""
    idx = _row_array(rows)
    for m in models:
        m.eval()
    outs: list[list[torch.Tensor]] = [[] for _ in models]
    b = eval_batch(x)
    for part in x.batches([idx[s : s + b] for s in range(0, len(idx), b)], workers):
        part = torch.from_numpy(part)
        for m, out in zip(models, outs, strict=True):
            device = next(iter(m.parameters()), torch.empty(0)).device
            f_head, _ = features(m, part.to(device))
            out.append(m.forward_head(f_head))
    return [torch.cat(o) for o in outs]


class _SharedEval:
    """One epoch's logits on the validation and tracked rows of every direction whose student reads a streamed column
    another direction reads too (``auto``'s candidates): each eval batch is decoded once for all of them (their
    weight averages swapped in), not once per candidate. One process only: under torchrun ranks split the rows."""

    def __init__(self, directions: list[Direction], averages: list, val_idx: torch.Tensor,
                 track_idx: torch.Tensor | None, acc: Accel, workers: int) -> None:
        self.logits: dict[tuple[int, str], torch.Tensor] = {}
        groups: dict[int, list] = {}
        for d, avg in zip(directions, averages, strict=True):
            if is_streamed(d.x_student):
                groups.setdefault(id(d.x_student), []).append((d, avg))
        _, rest = _tracked_rest(val_idx, track_idx, acc)
        parts = {"val": val_idx, **({"track": rest} if rest is not None and len(rest) else {})}
        for group in (g for g in groups.values() if len(g) > 1):
            with ExitStack() as stack:
                for d, avg in group:
                    if avg is not None:
                        stack.enter_context(avg.swapped_in(d.student))
                for name, rows in parts.items():
                    zs = _predict_many([d.student for d, _ in group], group[0][0].x_student, rows, workers)
                    for (d, _), z in zip(group, zs, strict=True):
                        self.logits[(id(d), name)] = z

    def take(self, d: Direction, part: str) -> torch.Tensor | None:
        return self.logits.pop((id(d), part), None)


def _evaluate(d: Direction, average: WeightAverage | None, val_idx: torch.Tensor, y: torch.Tensor, acc: Accel,
              epoch: int, track_idx: torch.Tensor | None = None, workers: int = 0,
              pre: _SharedEval | None = None) -> float:
    """The student's validation accuracy (of its weight average, swapped in, where there is one); its state is kept
    if this epoch is its best so far (``_keep_best``); with ``track_idx``, its per-row correctness there appended to
    ``d.tracked`` (under torchrun each rank predicts every world-th tracked row: ``_correct``). A streamed column is
    read in eval batches (``predict``), decoded ahead by ``workers`` DataLoader processes; ``pre`` holds this
    epoch's logits where candidates share one decode (``_SharedEval``)."""
    with average.swapped_in(d.student) if average is not None else nullcontext():
        n_val = len(val_idx)
        shared, rest = _tracked_rest(val_idx, track_idx, acc)
        z_val = pre.take(d, "val") if pre is not None else None
        if shared or z_val is not None:
            # the tracked rows open with the validation rows (auto's): one prediction serves both, the validation
            # rows in the same batches as _val_accuracy's (identical numbers), the rest after them
            if z_val is None:
                z_val = predict(d.student, d.x_student, rows=val_idx, workers=workers)
            right_val = z_val.argmax(1).cpu() == y[val_idx]
            val_acc = float(torch.tensor(float(right_val.sum())) / torch.tensor(float(n_val)))
        else:
            val_acc = _val_accuracy(d.student, subset(d.x_student, val_idx), y[val_idx], acc, workers=workers)
        _keep_best(d, epoch, val_acc)
        if track_idx is not None:
            z_rest = pre.take(d, "track") if pre is not None else None
            if z_rest is not None:
                right = z_rest.argmax(1).cpu() == y[rest]
            else:
                right = _correct(d.student, d.x_student, rest, y, acc, workers) if len(rest) else None
            if shared:
                right = right_val if right is None else torch.cat([right_val, right])
            d.tracked.append(right.numpy())
    return val_acc


def _correct(model: nn.Module, x, rows: torch.Tensor, y: torch.Tensor, acc: Accel, workers: int = 0) -> torch.Tensor:
    """Whether ``model`` is right on each of ``rows`` (bool, in their order). Under torchrun each rank predicts every
    world-th row and the answers are gathered: no rank decodes the others' rows."""
    if not acc.distributed:
        return predict(model, x, rows=rows, workers=workers).argmax(1).cpu() == y[rows]
    mine = rows[acc.rank :: acc.world]
    per = math.ceil(len(rows) / acc.world)
    padded = torch.zeros(per, dtype=torch.int8, device=acc.device)
    if len(mine):
        right = predict(model, x, rows=mine, workers=workers).argmax(1).cpu() == y[mine]
        padded[: len(mine)] = right.to(torch.int8).to(acc.device)
    parts = [torch.empty_like(padded) for _ in range(acc.world)]
    torch.distributed.all_gather(parts, padded)
    out = torch.zeros(len(rows), dtype=torch.bool)
    for r, part in enumerate(parts):
        k = len(range(r, len(rows), acc.world))
        out[r :: acc.world] = part[:k].cpu().bool()
    return out


def _keep_best(d: Direction, epoch: int, val_acc: float) -> None:
    """A CPU copy of the student's state as ``d.best_state`` when ``val_acc`` beats its best (the first epoch always
    does; a tie keeps the earlier epoch)."""
    if d.best_state is None or val_acc > d.best["val_acc"]:
        d.best_state = {k: v.detach().cpu().clone() for k, v in d.student.state_dict().items()}
        d.best = {"epoch": epoch, "val_acc": val_acc}


def _restore_best(directions: list[Direction], acc: Accel) -> None:
    """After the last epoch: each student holds its best state, on the CPU in eval mode (NCHW), its objective too."""
    for d in directions:
        d.student.load_state_dict(d.best_state)
        d.student.to("cpu").eval()
        if acc.channels_last:
            d.student.to(memory_format=torch.contiguous_format)
        d.objective.to("cpu")


def _rng_state(loop: _Loop) -> dict:
    """This process's random state: torch (CPU and its CUDA device), numpy, Python, and each augmenter's generator."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
             "python": random.getstate(),
             "augment": [g.get_state() for g in _augment_generators(loop.directions)]}
    if loop.acc.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(loop.acc.device)
    return state


def _set_rng_state(loop: _Loop, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    for g, saved in zip(_augment_generators(loop.directions), state["augment"], strict=True):
        g.set_state(saved)
    if "cuda" in state and loop.acc.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], loop.acc.device)


def _augment_generators(directions: list[Direction]) -> list[torch.Generator]:
    """Each distinct augmenter's generator (``auto``'s candidates share one augmenter), in direction order."""
    gens: dict[int, torch.Generator] = {}
    for d in directions:
        if d.augment is None:
            continue
        gen = getattr(d.augment, "gen", None)
        if not isinstance(gen, torch.Generator):  # its draws could not be replayed: a resumed run would differ
            raise TypeError(f"{d.name}: its augmenter {type(d.augment).__name__} has no torch.Generator `gen`, so "
                            "its random state cannot be saved with the training state")
        gens.setdefault(id(gen), gen)
    return list(gens.values())


def capture(loop: _Loop, records: list[dict]) -> dict:
    """Everything the next epoch depends on, as a dict ``torch.save`` can write (every rank must call it: the random
    states of all ranks are gathered, since ranks draw different augmentations)."""
    rng = _rng_state(loop)
    if loop.acc.distributed:
        ranks: list = [None] * loop.acc.world
        torch.distributed.all_gather_object(ranks, rng)
    else:
        ranks = [rng]
    return {"step": loop.step, "records": records,
            "directions": [{"name": d.name, "student": d.student.state_dict(), "objective": d.objective.state_dict(),
                            "best_state": d.best_state, "best": d.best,
                            "tracked": [torch.from_numpy(t) for t in d.tracked],  # weights_only loads tensors
                            "ema": avg.state_dict() if avg is not None else None}
                           for d, avg in zip(loop.directions, loop.averages, strict=True)],
            "optimizers": [o.state_dict() for o in loop.sgds],
            "scalers": [sc.state_dict() for sc in loop.scalers] if loop.scalers is not None else None,
            "sampler": {"permutation": loop.gen.get_state(), "labelled": loop.streams.gen.get_state()},
            "rng": ranks}


def restore(loop: _Loop, saved: dict) -> list[dict]:
    """Put a ``capture``d state back into a freshly prepared loop; returns the records of the epochs it holds."""
    names = [d["name"] for d in saved["directions"]]
    if names != [d.name for d in loop.directions]:
        raise ValueError(f"the training state holds directions {names}, this run trains "
                         f"{[d.name for d in loop.directions]}")
    for d, avg, s in zip(loop.directions, loop.averages, saved["directions"], strict=True):
        d.student.load_state_dict(s["student"])
        d.objective.load_state_dict(s["objective"])
        d.best_state, d.best = s["best_state"], s["best"]
        d.tracked = [t.numpy() for t in s.get("tracked", [])]  # auto's per-epoch correctness: the cross-fit needs all
        if avg is not None:
            avg.load_state_dict(s["ema"])
    for o, s in zip(loop.sgds, saved["optimizers"], strict=True):
        o.load_state_dict(s)
    for sc, s in zip(loop.scalers or [], saved["scalers"] or [], strict=True):
        sc.load_state_dict(s)
    loop.gen.set_state(saved["sampler"]["permutation"])
    loop.streams.gen.set_state(saved["sampler"]["labelled"])
    _set_rng_state(loop, saved["rng"][loop.acc.rank])
    loop.step = saved["step"]
    return list(saved["records"])


def fit(directions: list[Direction], y: torch.Tensor, split: np.ndarray, opt: OptimConfig, *, seed: int,
        teacher_cache: bool = True, grad_norm_every: int = 10, log=None, progress=None,
        description: str = "train", acc: Accel | None = None, select_rows: np.ndarray | None = None,
        track_rows: np.ndarray | None = None, early: bool = False, state=None, workers: int = 0) -> list[dict]:
    """Train every direction jointly (one optimizer, summed losses; under fp16 AMP one optimizer and
    loss scaler per direction); returns per-epoch records.

    ``y`` are the student's labels, -1 on an unlabelled training pair (``fdkd.pipeline.data.labels``); training
    accuracy counts labelled rows only. ``select_rows``: the validation rows that pick each direction's best
    epoch (default: every validation row). ``track_rows``: rows whose per-epoch correctness each direction keeps in
    ``direction.tracked`` (``method: auto`` cross-fits its judgement from them; never used to pick an epoch here).
    ``early``: the step budget and early stopping of ``Budget`` instead of ``opt.epochs`` (the caller resolves
    ``optim.stop``). ``state``: a ``fdkd.pipeline.resume.TrainState``; its saved epochs are restored before the
    first epoch, and it is written after every epoch. Each direction's ``training`` says how long it trained and why
    it stopped. ``workers``: DataLoader processes decoding a streamed column's batches ahead (``data.workers``; 0 in
    this process); a streamed student trains on its ``training(seed, epoch)`` view (random crops of (seed, epoch,
    row): a resumed epoch crops as the uninterrupted one did).

    With ``acc.world`` > 1 this runs inside one torchrun process per rank: the trainable parts are
    wrapped in DistributedDataParallel, each epoch's seeded permutation is sharded across ranks
    (DistributedSampler semantics: padded to equal shards, reshuffled every epoch), the global
    batch stays ``opt.batch_size``, validation is gathered, and only rank 0 logs. Each direction's
    best validation state ends up in ``direction.best_state`` and loaded into its student.
    Loss sums, accuracy counts and gradient norms stay on the device and are read once per epoch.

    The pieces: ``_prepare`` (once), then per epoch ``_train_epoch`` (one pass over the batches) and per direction
    ``_evaluate`` (validation, keeping the best state: ``_keep_best``); ``_restore_best`` at the end.
    """
    acc = acc or Accel(torch.device("cpu"))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx = torch.from_numpy(np.flatnonzero(split == 0))
    val_idx = torch.from_numpy(np.flatnonzero(split == 1) if select_rows is None else np.sort(select_rows))
    track_idx = None if track_rows is None else torch.from_numpy(np.asarray(track_rows, np.int64))
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError("training needs non-empty train and val splits")
    loop = _prepare(directions, y, train_idx, opt, gen, seed=seed, teacher_cache=teacher_cache,
                    grad_norm_every=grad_norm_every, acc=acc, workers=workers)
    acc = loop.acc  # channels_last may be off (a oneDNN hazard)
    budget = Budget.plan(opt, loop.steps_per_epoch, early)
    loop.total_steps = budget.epochs * loop.steps_per_epoch
    records, start, stalled = [], 0, False
    if state is not None and state.saved is not None:
        records = restore(loop, state.saved)
        start = state.epoch
        stalled = bool(state.saved.get("stalled"))
    task = progress.add_task(description, total=budget.epochs, info="") if progress and acc.is_main else None
    if task is not None and start:
        progress.update(task, advance=start, info=f"resumed after epoch {start}")
    epoch = start  # epochs run so far
    while epoch < budget.epochs and not stalled:
        ep = _train_epoch(loop, epoch)
        pre = None if acc.distributed else _SharedEval(directions, loop.averages, val_idx, track_idx, acc, workers)
        for d, avg in zip(directions, loop.averages, strict=True):
            val_acc = _evaluate(d, avg, val_idx, y, acc, epoch, track_idx, workers, pre)
            records.append(ep.record(d, epoch, val_acc, acc.world, ema=avg is not None))
            if log and acc.is_main:
                log(records[-1])
        stalled = budget.stalled(directions, epoch)
        epoch += 1
        if state is not None:
            state.save(capture(loop, records) | {"stalled": stalled}, epoch, budget.epochs, acc.is_main)
        if task is not None:
            info = "  ".join(f"{d.name} val {records[-len(directions) + i]['val_acc']:.3f}"
                             for i, d in enumerate(directions))
            progress.update(task, advance=1, info=info)
    for d in directions:
        d.training = budget.record(epoch, stalled, start or None)
    _restore_best(directions, acc)
    return records
