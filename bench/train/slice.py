"""A representative slice of the main job's distill epoch: the first steps of its training loop, timed.

    python -m bench.train.slice --run-dir runs/bench-busy/avdigits --steps 8

Builds exactly what ``fdkd distill`` (the built-in config, ``method: auto``) builds before its first epoch (the
four candidates, the shared augmenter, the teacher cache) and runs the first ``--steps`` steps of its first epoch
through ``fdkd.pipeline.train``'s own loop; prints one JSON line: the seconds of each step and a hash of the
trained weights (so a run at another thread count or wait policy shows whether the numerics moved). Used by
``bench.train.busy`` in child processes, so that OpenMP reads its environment (``OMP_WAIT_POLICY``) before torch
starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(sets: list[str]):
    """The main job's distill loop before its first epoch: (config, the ``train._Loop``); data and teacher are
    built (and cached in the run directory) when missing."""
    import torch

    from fdkd.pipeline import accel, data, distill, train
    from fdkd.pipeline import run as run_mod
    from fdkd.pipeline.augment import student_augmenter
    from fdkd.pipeline.config import load_config

    cfg = load_config(None, sets)
    if not (cfg.run_dir / "teacher.image.pt").exists():
        run_mod.run(cfg, stop_after="teacher")
    train.setup(cfg)
    acc = accel.setup(cfg.accel)
    ds = data.load(cfg)
    x, y = train.tensors(ds)
    teachers = distill._Teachers(cfg, ds, x, acc)
    aug = student_augmenter(cfg.distill.augment, ds, cfg.student_modality, seed=cfg.seed * 100 * 1000)
    shared = distill._SharedAugment(aug) if aug is not None else None
    directions = []
    for cname, dcfg in cfg.distill.runs():
        d, _, _ = distill._direction(cfg, dcfg, ds, x, teachers, f"student:{cname}", cfg.student_modality,
                                     cfg.teacher.modality)
        d.augment = shared
        directions.append(d)
    for d in directions:
        if hasattr(d.objective, "use_band_split"):
            d.objective.use_band_split(cfg.accel.band_split, acc.device)
    train_idx = torch.from_numpy(ds.indices("train"))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loop = train._prepare(directions, y, train_idx, cfg.distill.optim, gen, seed=cfg.seed,
                          teacher_cache=cfg.distill.teacher_cache, grad_norm_every=cfg.distill.grad_norm_every,
                          acc=acc)
    return cfg, loop


def timed_slice(loop, steps: int, warmup: int = 1) -> tuple[float, str]:
    """Seconds of the first ``steps`` steps of an epoch (after ``warmup`` steps of another, so that one-off
    allocations and kernel choices are not timed), and a sha256 prefix of every trained weight afterwards."""
    from fdkd.pipeline import train

    if warmup:
        train._train_epoch(dataclasses.replace(loop, bounds=loop.bounds[:warmup]), 0)
    t0 = time.perf_counter()
    train._train_epoch(dataclasses.replace(loop, bounds=loop.bounds[:steps]), 0)
    seconds = time.perf_counter() - t0
    h = hashlib.sha256()
    for name, t in loop.joint.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return seconds, h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs/bench-busy")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    import os

    import torch

    sets = [f"runs_dir={args.runs_dir}", *([f"threads={args.threads}"] if args.threads else []), *args.sets]
    _, loop = build(sets)
    seconds, weights = timed_slice(loop, args.steps)
    print(json.dumps({"seconds": seconds, "steps": args.steps, "weights": weights,
                      "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))


if __name__ == "__main__":
    main()
